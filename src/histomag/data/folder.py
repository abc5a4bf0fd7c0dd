"""The tiled dataset folder: ``dataset.json`` + ``manifest.csv`` + ``images/<slide>/<tuple>_<mag>.png``.

Layout::

    DIR/dataset.json          settings that made it (mags, size, mode, ...), for resume checks
    DIR/manifest.csv          one row per finished tuple (only rows whose images all exist)
    DIR/slides.csv            one row per slide: status, tuples written, error
    DIR/parts/<slide>.csv     per-slide journal appended after each tuple's images are in place
    DIR/images/<slide>/...    one PNG per magnification per tuple, written atomically
    DIR/.histomag-lock, .histomag-run   the owning run's lock and token (see data/runlock.py)

Resume trusts nothing blindly: a journal may hold torn lines or a tuple twice (a run killed while
its workers went on), so reading one keeps the last complete row per tuple and rewrites it clean,
and the manifest is one row per tuple with every unreferenced image deleted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from typing import Iterable, Sequence

from histomag.data.atomic import append_durably, atomic_write_csv, atomic_write_json, remove_unreferenced
from histomag.data.encoders import IMAGE_FORMATS, IMAGE_SUFFIXES, image_complete
from histomag.data.runlock import FolderLock, owned_by
from histomag.errors import ConfigError, DatasetError
from histomag.resolution import format_magnification

DATASET_VERSION = 1
BASE_COLUMNS = ["tuple_id", "slide_id", "patient_id", "x", "y", "field_width", "mode", "magnifications",
                "mpps", "label", "class_fractions", "tissue_fraction", "slide_mpp", "mpp_source"]
#: how a dataset folder is made, in API terms (errors speak the API; the CLI names ``histomag tile`` instead)
TILE_API = "histomag.tiling.jobs.tile_slides(jobs, settings, {out})"
RETILE_HINT = "re-run the same histomag.tiling.jobs.tile_slides(...) call"
#: settings that must match for a re-run to resume into the same folder
RESUME_KEYS = ("magnifications", "size", "mode", "placement", "overlap", "seed", "n_random", "min_tissue",
               "label_fraction", "negative_class", "image_format", "quality")
#: what a dataset.json written before a key existed meant by it
RESUME_DEFAULTS = {"image_format": "png", "quality": 90}



def patient_of(row: dict) -> str:
    """A manifest row's patient: its ``patient_id``, else its slide id (one slide, one patient)."""
    return row.get("patient_id") or row.get("slide_id", "")

def image_column(magnification: float) -> str:
    """Manifest column of a magnification's image path, e.g. ``image_40x``."""
    return f"image_{format_magnification(magnification)}"


def manifest_columns(magnifications: Sequence[float]) -> list[str]:
    return BASE_COLUMNS + [image_column(m) for m in sorted(magnifications, reverse=True)]


@dataclass(frozen=True)
class TileSettings:
    """Everything that decides which tuples a slide yields (stored in ``dataset.json``).

    The defaults here are the only ones: ``histomag tile`` and ``histomag dmsl train`` read theirs from this class.
    """

    magnifications: tuple[float, ...] = (40.0, 20.0)
    size: int = 600
    mode: str = "same-fov"
    placement: str = "grid"
    overlap: float = 0.25
    n_random: int = 100
    seed: int = 0
    min_tissue: float = 0.5
    tissue_threshold: float | None = None
    tissue_mpp: float = 8.0
    label_fraction: float = 0.8
    negative_class: str | None = None
    allow_upsample: bool = False
    max_tuples: int | None = None
    image_format: str = "png"  # lossless png (default), qoi or jxl; lossy jpeg or webp (data/encoders.py)
    quality: int = 90  # jpeg / webp quality
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise ConfigError(f"unknown image format {self.image_format!r}; valid: {', '.join(IMAGE_FORMATS)}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"image quality {self.quality} must be in 1..100")

    @property
    def image_suffix(self) -> str:
        return IMAGE_FORMATS[self.image_format].suffix

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name``."""
        from dataclasses import fields

        return next(f.default for f in fields(cls) if f.name == name)

    def to_json(self) -> dict:
        d = asdict(self)
        d["magnifications"] = list(self.magnifications)
        return d

    @classmethod
    def from_json(cls, data: dict, **changes: object) -> TileSettings:
        """Settings from :meth:`to_json` (or a ``dataset.json``; keys it does not know are ignored), with ``changes``."""
        from dataclasses import fields

        names = {f.name for f in fields(cls)}
        try:  # stored settings (a dataset.json, a run's config): a damaged file fails in one line
            ts = {k: v for k, v in data.items() if k in names}
            ts["magnifications"] = tuple(float(m) for m in ts["magnifications"])
            ts.update(changes)
            return cls(**ts)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            first = ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:160]
            raise DatasetError(f"stored tile settings are damaged ({type(exc).__name__}: {first}); "
                               f"{RETILE_HINT} into a new folder") from None


class DatasetFolder:
    """Reads and writes a tiled dataset folder."""

    def __init__(self, root: Path, run_token: str | None = None) -> None:
        """
        Args:
            root: the dataset folder.
            run_token: the token of the run this handle writes for (from :meth:`lock`); its journal
                writes then fail with :class:`FolderInUseError` once a newer run has taken the folder over.
        """
        self.root = Path(root)
        self.run_token = run_token

    @property
    def settings_path(self) -> Path:
        return self.root / "dataset.json"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.csv"

    def part_path(self, slide_id: str) -> Path:
        return self.root / "parts" / f"{slide_id}.csv"

    def image_path(self, slide_id: str, tuple_id: str, magnification: float, suffix: str = ".png") -> Path:
        return self.root / "images" / slide_id / f"{tuple_id}_{format_magnification(magnification)}{suffix}"

    # ----- settings -------------------------------------------------------------------------
    def prepare(self, settings: TileSettings | dict) -> None:
        """Create the folder, or check that an existing one was made with the same settings.

        ``settings`` may also be the ``dataset.json`` of another folder (a shard being merged).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        new = settings.to_json() if isinstance(settings, TileSettings) else \
            {k: v for k, v in settings.items() if k != "version"}
        if self.settings_path.exists():
            old = self.read_settings()
            k = first_difference(old, new)
            if k:
                raise DatasetError(
                    f"{self.root} already holds a dataset made with {k}={old.get(k)!r} (now {new.get(k)!r}); "
                    "use another output folder or delete it"
                )
        atomic_write_json(self.settings_path, {"version": DATASET_VERSION, **new})

    def read_settings(self) -> dict:
        if not self.settings_path.exists():
            raise DatasetError(f"{self.root}: no dataset.json; make the dataset with "
                               f"`{TILE_API.format(out=self.root)}`")
        try:
            data = json.loads(self.settings_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{self.settings_path}: not valid JSON ({exc.msg}); {RETILE_HINT}") from None
        except (UnicodeDecodeError, OSError) as exc:
            raise DatasetError(f"{self.settings_path}: cannot be read ({type(exc).__name__}); {RETILE_HINT}") from None
        mags = data.get("magnifications") if isinstance(data, dict) else None
        if not (isinstance(mags, list) and mags and all(
                isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m) and m > 0 for m in mags)):
            what = "not a JSON object" if not isinstance(data, dict) else f"magnifications {mags!r} are not positive numbers"
            raise DatasetError(f"{self.settings_path}: {what[:200]}; {RETILE_HINT}")
        return data

    # ----- ownership -----------------------------------------------------------------------
    def lock(self) -> FolderLock:
        """The owner's lock: ``with folder.lock() as token:`` around a whole run; refuses a second run."""
        return FolderLock(self.root)

    def _writing(self) -> contextlib.AbstractContextManager:
        return owned_by(self.root, self.run_token) if self.run_token else contextlib.nullcontext()

    # ----- per-slide journal (resume) -------------------------------------------------------
    def read_part(self, slide_id: str, columns: Sequence[str]) -> list[dict]:
        """Rows journalled for a slide: one per tuple (the last complete one wins), every image in place.

        Torn lines (a crash mid-append), repeated tuples and rows whose images are missing or
        truncated are dropped, and the journal is rewritten clean when any were found, so appends
        continue after a valid line and nothing broken is carried into the manifest.
        """
        path = self.part_path(slide_id)
        with self._writing():
            if not path.exists():
                return []
            lines, clean = _journal_lines(path.read_bytes(), columns)
            rows: dict[str, dict] = {}
            for values in lines:
                row = dict(zip(columns, values))
                if self._images_complete(row):
                    rows[row["tuple_id"]] = row  # a later complete row replaces an earlier one, in place
                else:
                    clean = False
            if not clean or len(rows) != len(lines):
                atomic_write_csv(path, columns, rows.values())
        return list(rows.values())

    def append_part(self, slide_id: str, columns: Sequence[str], row: dict) -> None:
        """Append one finished tuple to the slide's journal (after its images are written).

        Raises:
            FolderInUseError: this handle writes for a run that a newer run has replaced.
        """
        self.append_parts(slide_id, columns, [row])

    def append_parts(self, slide_id: str, columns: Sequence[str], rows: Sequence[dict]) -> None:
        """Append finished tuples to the slide's journal in one write and one fsync (the tiler batches
        the tuples whose images are all on disk: an fsync per tuple cost more than encoding it).

        Raises:
            FolderInUseError: this handle writes for a run that a newer run has replaced.
        """
        if not rows:
            return
        path = self.part_path(slide_id)
        with self._writing():
            new = not path.exists() or path.stat().st_size == 0
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            if new:
                writer.writerow(columns)
            writer.writerows([row.get(c, "") for c in columns] for row in rows)
            append_durably(path, buf.getvalue().encode("utf-8"))  # a full disk: StorageError, a torn line at most

    def _images_complete(self, row: dict) -> bool:
        return all(v and "\x00" not in v and _file_complete(self.root / v) for k, v in row.items() if k.startswith("image_"))

    # ----- manifest -------------------------------------------------------------------------
    def write_manifest(self, slide_ids: Sequence[str], columns: Sequence[str]) -> int:
        """Merge the slide journals (in the given order) into ``manifest.csv``; returns the row count.

        One row per ``tuple_id``; images that no row references (written but never journalled, or
        left by a run that was killed) are deleted.
        """
        with self._writing():
            rows: dict[str, dict] = {}
            # slides of this run first, then those of earlier runs into the same folder
            known = set(slide_ids)
            parts = self.root / "parts"
            others = [p.stem for p in sorted(parts.glob("*.csv")) if p.stem not in known] if parts.is_dir() else []
            for sid in [*slide_ids, *others]:
                for row in self.read_part(sid, columns):
                    rows[row["tuple_id"]] = row
            atomic_write_csv(self.manifest_path, columns, rows.values())
            self.remove_orphans(rows.values())
        return len(rows)

    def remove_orphans(self, rows: Iterable[dict]) -> int:
        """Delete image files no row references and temporary files of interrupted writes; returns how many."""
        keep = {self.root / v for row in rows for k, v in row.items() if k.startswith("image_") and v}
        return remove_unreferenced(self.root, keep, _written_here, (self.root / "parts",))

    def read_manifest(self) -> list[dict]:
        """Rows of ``manifest.csv``; raises :class:`DatasetError` listing missing images."""
        if not self.manifest_path.exists():
            raise DatasetError(f"{self.root}: no manifest.csv; make it with `{TILE_API.format(out=self.root)}`")
        try:
            with open(self.manifest_path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                rows = list(reader)
        except (UnicodeDecodeError, csv.Error, OSError) as exc:
            raise DatasetError(f"{self.manifest_path}: not a readable CSV ({type(exc).__name__}); "
                               f"{RETILE_HINT} to rewrite it") from None
        for line, row in enumerate(rows, start=2):
            if None in row or None in row.values() or any("\x00" in v for v in row.values()):
                raise DatasetError(f"{self.manifest_path} row {line} has {len(reader.fieldnames or [])} columns "
                                   f"in its header but not in this row (or a NUL byte); {RETILE_HINT} to rewrite it")
        missing = [v for row in rows for k, v in row.items() if k.startswith("image_") and v
                   and not _is_file(self.root / v)]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DatasetError(
                f"{self.manifest_path}: {len(missing)} referenced images are missing ({', '.join(missing[:3])}{more}); "
                f"{RETILE_HINT} to restore them"
            )
        return rows


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for a path the system refuses (too long, say) instead of an OSError."""
    try:
        return path.is_file()
    except OSError:
        return False


def _journal_lines(data: bytes, columns: Sequence[str]) -> tuple[list[list[str]], bool]:
    """The well-formed rows of a journal and whether the file was clean.

    Each row is one physical line (no field holds a newline), so a torn line cannot swallow the
    next one. A last line without its newline is torn; a missing or foreign header means nothing
    in the file can be trusted.
    """
    lines = data.decode("utf-8", errors="replace").split("\n")
    clean = lines[-1] == ""  # every append ends with a newline
    lines = lines[:-1]
    header = next(csv.reader(lines[:1]), None)
    if header != list(columns):
        return [], False
    rows = []
    for line in lines[1:]:
        try:
            values = next(csv.reader([line]))
        except (csv.Error, StopIteration):
            values = []
        if len(values) == len(columns) and values[0]:
            rows.append(values)
        else:
            clean = False
    return rows, clean


def _file_complete(path: Path) -> bool:
    """The file exists and its format's start and end markers are there (PNG signature + IEND,
    JPEG SOI + EOI, WebP RIFF header whose size matches the file, ...: data/encoders.py)."""
    return image_complete(path)


def _written_here(path: Path, slide_id: str) -> bool:
    """A tuple image of ``images/<slide_id>/`` or the temporary file of one (nothing else is deleted)."""
    name = path.name
    ours = (name.startswith(f"{slide_id}_") and name.endswith(IMAGE_SUFFIXES)) or \
        (name.startswith(f".{slide_id}_") and name.endswith(".tmp"))
    return ours and path.is_file()


def first_difference(old: dict, new: dict) -> str | None:
    """The first setting (of :data:`RESUME_KEYS`) two ``dataset.json`` contents disagree on, or None.

    A key that ``old`` lacks means what it meant before it existed (:data:`RESUME_DEFAULTS`).
    """
    return next((k for k in RESUME_KEYS if _norm(old.get(k, RESUME_DEFAULTS.get(k)))
                 != _norm(new.get(k, RESUME_DEFAULTS.get(k)))), None)


def _norm(value: object) -> object:
    if isinstance(value, (list, tuple)):
        try:
            return [float(v) for v in value]
        except (TypeError, ValueError):  # not numbers (a damaged dataset.json): compared as they are
            return list(value)
    return value
