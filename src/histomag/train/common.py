"""Pieces both training tasks share: a quiet Lightning and checkpoint reading with type checks."""

from __future__ import annotations

import contextlib
import logging
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
