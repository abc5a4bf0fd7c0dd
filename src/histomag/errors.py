"""One exception hierarchy for histomag.

Every message is one line that names the problem and the fix; the CLI prints it and exits 2.
"""

from __future__ import annotations

import errno as _errno
import os


class HistomagError(Exception):
    """Base class of every error histomag raises on bad input."""

    exit_code: int = 2


class InputPathError(HistomagError):
    """A path that does not exist or is of the wrong kind."""


class UnreadableSlideError(HistomagError):
    """A file that no slide backend can open, or a corrupt/truncated one."""


class MissingResolutionError(HistomagError):
    """A slide without mpp or objective power, and no override."""


class UpsampleError(HistomagError):
    """A request above the slide's scan resolution without ``allow_upsample``."""


class NoTissueError(HistomagError):
    """A slide or image in which no tissue was found."""


class AnnotationError(HistomagError):
    """A label mask or GeoJSON that cannot be used with its slide."""


class DatasetError(HistomagError):
    """A dataset folder or manifest that is missing, malformed or inconsistent."""


class ConfigError(HistomagError):
    """An option value that makes no sense (unknown name, bad range, ...)."""


class CheckpointError(HistomagError):
    """A checkpoint or run folder that is missing files or belongs to another model type."""


class FolderInUseError(DatasetError):
    """An output folder that another run is writing to, or that a newer run has taken over."""


class DecoderLimitError(UnreadableSlideError):
    """A file whose header claims more than histomag will decode (a plain image over the pixel limit)
    or more than the file can hold (missing tile offsets, tiles or strips past its end).

    Raised where the file is opened, before anything is decoded; no other slide reader is tried.
    """


class StorageError(HistomagError):
    """A write the file system refused: disk full, quota exceeded, I/O error, read-only file system.

    Not a problem of one input file: a batch stops at the first one (handlers that turn a
    :class:`HistomagError` into a failed row re-raise this), and what was finished is kept for a rerun.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


#: errno values that mean the storage, not the input, failed
STORAGE_ERRNOS = frozenset({_errno.ENOSPC, _errno.EDQUOT, _errno.EIO, _errno.EROFS})
#: the default end of a :class:`StorageError` message: how to pick up where the run stopped
RESUME_HINT = "repeat the same call to resume (finished work is kept)"


def storage_error(exc: BaseException, path: object = None, resume: str = RESUME_HINT,
                  doing: str = "writing") -> StorageError | None:
    """The one-line :class:`StorageError` for an ``OSError`` the storage raised, or None for any other error.

    ``path`` names the file being written (the error's own ``filename`` is often a temporary file or missing);
    ``doing`` says what failed there ("writing"; "at" where it is not known).
    """
    if isinstance(exc, StorageError):  # already one line; only the way to resume may differ
        return exc if resume == RESUME_HINT else StorageError(str(exc).replace(RESUME_HINT, resume), exc.path)
    code = getattr(exc, "errno", None)
    if not isinstance(exc, OSError) or code not in STORAGE_ERRNOS:
        return None
    where = path if path is not None else exc.filename
    problem, fix = {
        _errno.ENOSPC: ("disk full", "free space or choose another output folder"),
        _errno.EDQUOT: ("disk quota exceeded", "free space or choose another output folder"),
        _errno.EIO: ("I/O error", "check the disk or choose another output folder"),
        _errno.EROFS: ("read-only file system", "choose a writable output folder"),
    }[code]
    at = f" {doing} {where}" if where else ""
    return StorageError(f"{problem}{at} ({os.strerror(code)}); {fix}, then {resume}",
                        path=str(where) if where else None)
