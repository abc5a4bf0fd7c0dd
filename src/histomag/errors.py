"""One exception hierarchy for histomag.

Every message is one line that names the problem and the fix; the CLI prints it and exits 2.
"""

from __future__ import annotations


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
