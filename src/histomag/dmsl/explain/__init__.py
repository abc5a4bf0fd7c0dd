"""Explain what a DMSL run learned: Grad-CAM per magnification branch and similarity statistics.

Diao et al., IEEE JBHI 2023, Figs. 4-6 and Eq. (4):

- :mod:`histomag.dmsl.explain.gradcam` — Grad-CAM of every branch at its first conv (low level) and
  last feature block (high level), overlaid on the tuple's members (``histomag dmsl cam``).
- :mod:`histomag.dmsl.explain.similarity_stats` — the similarity ``S = (corr + 1) / 2`` of the
  branches' pooled features, binned for correctly and wrongly classified tuples, as a CSV table
  and nested pie charts (``histomag dmsl similarity``).

Both work on a fold's *test* tuples (``RUN/folds/K/split.json``) with that fold's checkpoint, so
what they show is out of sample. :func:`fold_test_data` is the shared loader; heavy modules
(torch, Lightning) are imported inside functions so ``import histomag.dmsl.explain`` stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histomag.errors import ConfigError

__all__ = ["FoldData", "fold_test_data", "check_class", "fold_numbers"]


@dataclass
class FoldData:
    """One fold's model and its test tuples.

    Attributes:
        fold: fold number (1-based).
        task: the fold's :class:`~histomag.dmsl.fit.DMSLTask` (eval mode).
        dataset: the fold's test tuples with the evaluation transform.
        class_names: class names in index order.
        mode: the run's mode (``sim``, ``mm``, ``single``, ``mscn``).
    """

    fold: int
    task: Any
    dataset: Any
    class_names: list[str]
    mode: str


def fold_numbers(run: Any, fold: int | None) -> list[int]:
    """The folds to use: ``[fold]`` (checked against the run) or every fold of the run."""
    if fold is None:
        return list(range(1, run.config.folds + 1))
    if not 1 <= fold <= run.config.folds:
        raise ConfigError(f"fold={fold} is out of range: the run has folds 1..{run.config.folds}")
    return [fold]


def check_class(class_name: str | None, class_names: list[str]) -> int | None:
    """Index of ``class_name`` among the model's classes (None for None).

    Raises:
        ConfigError: the model has no such class (the message lists its classes).
    """
    if class_name is None:
        return None
    if class_name not in class_names:
        raise ConfigError(f"class {class_name!r} is not one of the model's classes: {', '.join(class_names)}")
    return class_names.index(class_name)


def fold_test_data(run_dir: str | Path, data_dir: str | Path | None, fold: int) -> FoldData:
    """Load fold ``fold``'s best checkpoint and its test tuples from ``data_dir``.

    Args:
        run_dir: a run folder made by ``histomag dmsl train``.
        data_dir: the dataset folder the run was trained on (default: the one in config.json).
        fold: fold number.

    Raises:
        CheckpointError: config.json, the fold's split.json or its checkpoint is missing (the
            message names the file and the command that makes it).
        DatasetError: ``data_dir`` lacks test tuples of the fold.
    """
    from histomag.dmsl.cv import fold_test_set, read_run

    run = read_run(run_dir)
    fold_numbers(run, fold)
    task, dataset = fold_test_set(run, fold, data_dir)
    return FoldData(fold, task, dataset, list(run.class_names), run.config.mode)
