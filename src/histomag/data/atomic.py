"""Atomic file writes: a temporary file in the same folder, then ``os.replace``."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from histomag.data.encoders import IMAGE_FORMATS, encode_image, encode_png  # noqa: F401 - IMAGE_FORMATS re-exported
from histomag.errors import storage_error

#: fault injection for tests: ``ENOSPC@N`` (or ``EIO@N``, any errno name) makes the N-th write of this
#: process, and every later one, fail half-way as a full disk would (a disk that is full stays full);
#: ``ENOSPC@N:.ckpt`` counts and fails only writes to files whose names end so
WRITE_FAULT_ENV = "HISTOMAG_WRITE_FAULT"
_writes = 0
_writes_lock = threading.Lock()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _injected_fault(path: Path) -> int | None:
    """The errno this write of ``path`` must fail with under :data:`WRITE_FAULT_ENV`, else None."""
    spec = os.environ.get(WRITE_FAULT_ENV)
    if not spec:
        return None
    global _writes
    name, _, at = spec.partition("@")
    at, _, suffix = at.partition(":")
    if not path.name.endswith(suffix):
        return None
    with _writes_lock:
        _writes += 1
        n = _writes
    return getattr(errno, name.strip().upper(), errno.EIO) if n >= int(at or 1) else None


def _write_all(fh: Any, data: bytes, path: Path) -> None:
    fault = _injected_fault(path)
    if fault is not None:
        fh.write(data[: len(data) // 2])  # what a disk that fills up mid-write leaves behind
        fh.flush()
        raise OSError(fault, os.strerror(fault))
    fh.write(data)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one.

    Raises:
        StorageError: the disk is full, over quota, read-only or failing (the temporary file is removed).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise storage_error(exc, path) or exc from None
    try:
        with os.fdopen(fd, "wb") as fh:
            _write_all(fh, data, path)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        err = storage_error(exc, path)
        if err is None or err is exc:
            raise
        raise err from None


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` (whole lines of a journal) to ``path`` and fsync it.

    A failure can leave a torn last line; journal readers drop it.

    Raises:
        StorageError: the disk is full, over quota, read-only or failing.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as fh:
            _write_all(fh, data, path)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise storage_error(exc, path) or exc from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_png(path: Path, rgb: np.ndarray, compress_level: int = 1) -> None:
    """Save an array as PNG atomically (fast compression: datasets favour write speed; see data/encoders.py)."""
    atomic_write_bytes(path, encode_png(rgb, level=compress_level))


def atomic_write_image(path: Path, rgb: np.ndarray, image_format: str = "png", quality: int = 90) -> None:
    """Save an array atomically in one of :data:`IMAGE_FORMATS` (png, jpeg, webp, qoi, jxl; see data/encoders.py)."""
    atomic_write_bytes(path, encode_image(rgb, image_format, quality))


def atomic_write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any] | dict]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(h, "") for h in header] if isinstance(row, dict) else row)
    atomic_write_text(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def remove_unreferenced(root: Path, keep: set[Path], owned: Callable[[Path, str], bool],
                        tmp_dirs: Sequence[Path] = ()) -> int:
    """Delete files under ``root/images/<sub>/`` that ``keep`` does not list, and ``.*.tmp`` leftovers.

    Only files ``owned(path, sub)`` says this writer made are touched; emptied sub-folders are
    removed. Returns how many files were deleted.
    """
    stray = [f for d in (root, *tmp_dirs) if d.is_dir() for f in d.glob(".*.tmp")]
    images = root / "images"
    for d in sorted(images.iterdir()) if images.is_dir() else []:
        if d.is_dir():
            stray.extend(f for f in d.iterdir() if f not in keep and owned(f, d.name))
    for f in stray:
        f.unlink(missing_ok=True)
    for d in sorted(images.iterdir()) if images.is_dir() else []:
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return len(stray)

