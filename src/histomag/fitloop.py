"""The fit loop's shared pieces: loaders, trainer settings, best/last checkpoints, a quiet Lightning, checkpoint reading.

Both tasks (DMSL in :mod:`histomag.dmsl.fit`, magnification in :mod:`histomag.magnification.fit`)
build their Lightning runs from these; each keeps only what is its own (model, data, metrics).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from histomag.errors import CheckpointError

#: Lightning warnings that are known to be harmless for our small CPU runs and tests
QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*is set to `True`.*deterministic.*",
    r".*Experiment logs directory .* exists.*",
    r".*Total length of .* across ranks is zero.*",
    r".*`training_step` returned `None`.*",
    r".*LeafSpec.*",
    r".*no `val_dataloader`.*",
)


def _not_a_tip(record: logging.LogRecord) -> bool:
    return "Tip:" not in record.getMessage()


@contextlib.contextmanager
def lightning_quiet(verbose: bool) -> Iterator[None]:
    """Silence Lightning's routine output: always its known-harmless warnings and tips, info logs unless verbose."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.addFilter(_not_a_tip)
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        if not verbose:
            for lg in loggers:
                lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            rank_zero.removeFilter(_not_a_tip)
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def launched_rank_zero() -> bool:
    """False in a process that a distributed launch started as a rank other than the global rank 0.

    Read from the launchers' environment before any Trainer exists: ``RANK`` (torchrun and other
    elastic launchers), ``SLURM_PROCID`` in a Slurm step of several tasks, and ``NODE_RANK`` /
    ``LOCAL_RANK`` (Lightning's own ``ddp`` launcher re-runs the command in each extra process with
    ``LOCAL_RANK`` set, and on every node but the first with ``NODE_RANK``). Such a process trains
    with the others but writes nothing of the run folder: its global rank 0 does.
    """
    env = os.environ
    if env.get("RANK", "").strip().isdigit():
        return int(env["RANK"]) == 0
    ntasks = env.get("SLURM_NTASKS", "1")
    if env.get("SLURM_PROCID", "").isdigit() and ntasks.isdigit() and int(ntasks) > 1:
        return int(env["SLURM_PROCID"]) == 0
    return all(int(v) == 0 for v in (env.get("NODE_RANK", "0"), env.get("GROUP_RANK", "0"), env.get("LOCAL_RANK", "0"))
               if v.strip().isdigit())


def make_loader(dataset: Any, batch_size: int, *, shuffle: bool, num_workers: int, seed: int | None = None,
                drop_last: bool | None = None, persistent: bool = True) -> Any:
    """A DataLoader with the settings every task shares.

    Args:
        dataset: a map-style dataset.
        batch_size, shuffle, num_workers: as for ``DataLoader``.
        seed: seeds the shuffling generator (reproducible order).
        drop_last: None drops the last batch only when shuffling would leave it a single sample
            (BatchNorm needs more than one); True/False as given.
        persistent: keep worker processes between epochs.
    """
    from torch.utils.data import DataLoader

    if drop_last is None:
        n = len(dataset)
        drop_last = shuffle and n > batch_size and n % batch_size == 1
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last,
                      persistent_workers=persistent and num_workers > 0, pin_memory=torch.cuda.is_available(),
                      generator=generator)


def default_precision(precision: str | None, accelerator: str = "auto") -> str:
    """``precision`` as given, else 16-bit mixed on a GPU and 32-bit on a CPU."""
    cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    return precision or ("16-mixed" if cuda else "32-true")


def checkpoint_callbacks(ckpt_dir: Path, monitor: str) -> tuple[Any, Any]:
    """``best.ckpt`` (lowest ``monitor``) and ``last.ckpt`` (every epoch, for resume) callbacks.

    Lightning's ``save_last`` only refreshes ``last.ckpt`` when a top-k file is written, so "last" is
    a second, unmonitored callback; put it after "best" in the callback list.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="min", save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)
    return best, last


def ensure_best(ckpt_dir: Path) -> Path:
    """``best.ckpt``, copied from ``last.ckpt`` when no validation finished (e.g. stopped by a time limit)."""
    from histomag.data.atomic import atomic_write_bytes

    best, last = ckpt_dir / "best.ckpt", ckpt_dir / "last.ckpt"
    if last.is_file() and not best.is_file():
        atomic_write_bytes(best, last.read_bytes())
    return best


def _atomic_checkpoint_io_class() -> type:
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from histomag.data.atomic import atomic_write_bytes

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Lightning's checkpoint IO, writing through :func:`histomag.data.atomic.atomic_write_bytes`.

        Lightning's own save stages the file in the system temp folder and *copies* it over when that is
        another file system, so a full disk could leave a half-written ``last.ckpt``; here a failed save
        leaves the previous checkpoint and raises :class:`~histomag.errors.StorageError`.
        """

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            if storage_options is not None:
                raise TypeError(f"{type(self).__name__} takes no storage_options")
            buf = io.BytesIO()
            torch.save(checkpoint, buf)
            atomic_write_bytes(Path(path), buf.getvalue())

    AtomicCheckpointIO.__module__, AtomicCheckpointIO.__qualname__ = __name__, "AtomicCheckpointIO"
    return AtomicCheckpointIO


def __getattr__(name: str) -> Any:
    """``AtomicCheckpointIO``, made on first use (importing this module does not import Lightning)."""
    if name == "AtomicCheckpointIO":
        cls = _atomic_checkpoint_io_class()
        globals()[name] = cls  # pickles by name, as strategies that spawn processes need
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def checkpoint_plugins() -> list[Any]:
    """Trainer ``plugins`` that every fit uses: checkpoints saved atomically (:class:`AtomicCheckpointIO`)."""
    return [__getattr__("AtomicCheckpointIO")()]


def read_checkpoint(path: Path, map_location: Any = "cpu") -> tuple[dict, dict | None]:
    """Load a Lightning checkpoint (weights only) and return it with its ``histomag`` metadata.

    Raises:
        CheckpointError: the file cannot be read as a checkpoint (one-line message).
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
    meta = ckpt.get("histomag") if isinstance(ckpt, dict) else None
    return ckpt, meta if isinstance(meta, dict) else None
