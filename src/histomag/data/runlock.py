"""Who may write an output folder: one run at a time, and nobody after a newer run has taken over.

Two small files in the folder::

    DIR/.histomag-lock   an exclusive ``flock`` held by the main process of the run that owns DIR;
                         the kernel drops it when that process ends, however it ends (no stale locks)
    DIR/.histomag-run    the owning run's token ("<pid> <random hex>"), rewritten in place by each run

A run takes the lock (a second concurrent run is refused), then writes its token under an exclusive
lock on ``.histomag-run``. Its worker processes append to journals only inside :func:`owned_by`,
which holds a shared lock on ``.histomag-run`` and checks the token: a worker left over from a killed
run finds a newer token and stops before writing, and the new run's token write waits for any append
already under way, so it never reads a journal that an old worker is still extending.

Without ``fcntl`` (Windows), or on a file system without locks, the token is still written and
checked, but nothing is locked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path
from typing import Iterator

from histomag.errors import FolderInUseError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".histomag-lock"
TOKEN_NAME = ".histomag-run"


class FolderLock:
    """The owner's lock on an output folder; ``with FolderLock(dir) as token:`` for the run's duration."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.token: str | None = None
        self._fd: int | None = None

    def acquire(self) -> str:
        """Take the folder (creating it) and return this run's new token.

        Raises:
            FolderInUseError: another live run holds the folder.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        # os.open descriptors are not inherited by spawned processes: the lock dies with this process
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = read_token(self.root)
                pid = f" (pid {holder.split()[0]})" if holder else ""
                raise FolderInUseError(f"{self.root} is being written by another histomag run{pid}; "
                                       "wait for it to finish or write to another folder") from None
            except OSError as exc:  # a file system without locks: the token still fences off old writers
                log.warning("%s: cannot lock (%s); a second run on this folder would not be refused",
                            self.root, exc.strerror)
        self._fd = fd
        self.token = f"{os.getpid()} {secrets.token_hex(8)}"
        with _token_file(self.root, exclusive=True) as tfd:
            os.ftruncate(tfd, 0)
            os.lseek(tfd, 0, os.SEEK_SET)
            os.write(tfd, self.token.encode())
            os.fsync(tfd)
        return self.token

    def release(self) -> None:
        """Let the next run in (the token stays, so late writers of this run are still fenced off)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> str:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_token(root: str | Path) -> str:
    """The token of the run that last took ``root`` ("" when none has)."""
    path = Path(root) / TOKEN_NAME
    if not path.exists():
        return ""
    with _token_file(Path(root), exclusive=False) as fd:
        return _read(fd)


@contextlib.contextmanager
def owned_by(root: str | Path, token: str) -> Iterator[None]:
    """Hold while writing on behalf of run ``token``; no newer run can take ``root`` over meanwhile.

    Raises:
        FolderInUseError: a newer run has taken the folder over (this writer belongs to a dead run).
    """
    with _token_file(Path(root), exclusive=False) as fd:
        current = _read(fd)
        if current != token:
            raise FolderInUseError(f"{root} has been taken over by a newer run ({current or 'none'}); "
                                   "this writer of an earlier run stops without writing")
        yield


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 256).decode(errors="replace").strip()


@contextlib.contextmanager
def _token_file(root: Path, *, exclusive: bool) -> Iterator[int]:
    fd = os.open(root / TOKEN_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):  # no locks on this file system: check the token unlocked
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)
