"""Training tasks (Lightning), data modules, metrics and run folders.

Names are imported lazily, so ``import histomag.train`` does not pull in Lightning:

- magnification models (Hagnifinder regressor, level classifier): ``MagnifierConfig``,
  ``PRESETS``, ``preset``, ``build_magnifier`` (:mod:`histomag.train.magconfig`, no Lightning),
  ``load_magnifier``, ``predict_images`` (:mod:`histomag.train.maginfer`, no Lightning),
  ``train_magnifier``, ``train_classifier``, ``MagnifierTask``, ``MagnificationDataModule``
  (:mod:`histomag.train.magnification`),
  ``MagnificationDataset`` (:mod:`histomag.train.magdata`), ``magnification_metrics``,
  ``level_metrics``, ``write_metrics``, ``scatter_plot``, ``evaluate_run``, ``compare_runs``
  (:mod:`histomag.train.magmetrics`).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "MagnifierConfig": "histomag.train.magconfig",
    "PRESETS": "histomag.train.magconfig",
    "preset": "histomag.train.magconfig",
    "train_magnifier": "histomag.train.magnification",
    "train_classifier": "histomag.train.magnification",
    "load_magnifier": "histomag.train.maginfer",
    "predict_images": "histomag.train.maginfer",
    "build_magnifier": "histomag.train.magconfig",
    "MagnifierTask": "histomag.train.magnification",
    "MagnificationDataModule": "histomag.train.magnification",
    "MagnificationDataset": "histomag.train.magdata",
    "read_manifest": "histomag.train.magdata",
    "magnification_metrics": "histomag.train.magmetrics",
    "level_metrics": "histomag.train.magmetrics",
    "write_metrics": "histomag.train.magmetrics",
    "scatter_plot": "histomag.train.magmetrics",
    "evaluate_run": "histomag.train.magmetrics",
    "compare_runs": "histomag.train.magmetrics",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'histomag.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
