"""The magnification run folder: one class owns its layout and schema (no torch: training, evaluation,
inference, export and the report read runs through it).

Layout (schema version :data:`RUN_VERSION`)::

    RUN/config.json              the resolved MagnifierConfig + model_type, version, data_dir, versions
                                 (and what the data were, for runs on real sources)
    RUN/checkpoints/best.ckpt    lowest validation loss (config.monitor)
    RUN/checkpoints/last.ckpt    end of the latest epoch; training resumes from it
    RUN/metrics.csv              every session's Lightning CSV log, merged
    RUN/logs/version_N/          one CSVLogger folder per session (metrics.csv, hparams.yaml)
    RUN/train_summary.json       best score, epochs, steps, seconds of the latest session
    RUN/eval/                    metrics.json, metrics_per_*.csv, predictions.csv, scatter.png of an evaluation

A folder written before ``version`` existed reads as version 1 (the same layout); a newer version
is refused in one line naming both versions.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from histomag.data.atomic import atomic_write_json
from histomag.errors import CheckpointError, ConfigError

MODEL_TYPE_REGRESSOR = "magnification-regressor"
MODEL_TYPE_CLASSIFIER = "magnification-classifier"
MODEL_TYPES: tuple[str, ...] = (MODEL_TYPE_REGRESSOR, MODEL_TYPE_CLASSIFIER)
RUN_VERSION = 1
MAG_TRAIN_HINT = "histomag.magnification.fit.train_magnifier(DATA, RUN, config)"
MAG_EVALUATE_HINT = "histomag.magnification.metrics.evaluate_run({run})"


class MagnificationRun:
    """Reads and writes a magnification run folder (see the module docstring for the layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ----- paths ------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint_path(self, which: str = "best") -> Path:
        """``checkpoints/<which>.ckpt`` (``best`` or ``last``), whether or not it exists."""
        if which not in ("best", "last"):
            raise ConfigError(f"which must be 'best' or 'last', got {which!r}")
        return self.checkpoint_dir / f"{which}.ckpt"

    def checkpoint(self, which: str = "best") -> Path:
        """The existing ``checkpoints/<which>.ckpt``; CheckpointError naming the file and the command."""
        path = self.checkpoint_path(which)
        if not path.is_file():
            raise CheckpointError(f"run folder {self.root} has no checkpoints/{which}.ckpt; make it with: "
                                  f"{MAG_TRAIN_HINT}")
        return path

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def metrics_csv_path(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def train_summary_path(self) -> Path:
        return self.root / "train_summary.json"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    # ----- config -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.is_file()

    def read_config(self) -> dict[str, Any]:
        """``config.json``, checked for its schema version (a folder without one reads as version 1).

        Raises:
            CheckpointError: no readable ``config.json``, or one written by a newer schema.
        """
        try:
            meta = json.loads(self.config_path.read_text())
        except (OSError, ValueError):
            raise CheckpointError(f"run folder {self.root} has no readable config.json; make it with: "
                                  f"{MAG_TRAIN_HINT}") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{self.config_path} is not a run's config; make one with: {MAG_TRAIN_HINT}")
        version = meta.get("version", 1)
        if not isinstance(version, int) or version > RUN_VERSION:
            raise CheckpointError(f"{self.root} is a run folder of version {version!r}, newer than this histomag "
                                  f"reads (version {RUN_VERSION}); upgrade histomag or re-run: {MAG_TRAIN_HINT}")
        data = meta.get("data_dir")
        if data is not None and not (isinstance(data, str) and "\x00" not in data):
            raise CheckpointError(f"{self.config_path}: data_dir is {data!r}, not a folder's path; re-run: {MAG_TRAIN_HINT}")
        return meta

    def read_meta(self) -> dict[str, Any]:
        """:meth:`read_config` of a magnification run (its ``model_type`` checked).

        Raises:
            CheckpointError: as :meth:`read_config`, or a run of another model type.
        """
        meta = self.read_config()
        if meta.get("model_type") not in MODEL_TYPES:
            raise CheckpointError(f"{self.root} holds a {meta.get('model_type') or 'unknown'} run, not a magnification "
                                  f"one; make one with: {MAG_TRAIN_HINT}")
        return meta

    def write_config(self, config: dict[str, Any], *, data_dir: str | Path | None,
                     extra: dict[str, Any] | None = None, versions: dict[str, str] | None = None) -> None:
        """Write ``config.json``: the config, the schema version, the data and the library versions."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_path, {
            **config, "version": RUN_VERSION, "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else None,
            **(extra or {}), "versions": dict(versions or {}),
        })

    def data_dir(self) -> Path:
        """The magnification set the run was trained on (CheckpointError when it was trained on sources)."""
        data = self.read_config().get("data_dir")
        if not data:
            raise CheckpointError(f"run {self.root} was not trained on a magnification set; give the set to evaluate")
        return Path(data)

    def write_train_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.train_summary_path, summary)

    # ----- evaluation -------------------------------------------------------------------------
    def read_eval_metrics(self) -> tuple[Path, dict[str, Any]]:
        """``eval/metrics.json`` (its path and content).

        Raises:
            CheckpointError: missing, unreadable, or without overall metrics.
        """
        path = self.eval_dir / "metrics.json"
        evaluate = MAG_EVALUATE_HINT.format(run=self.root)
        if not path.is_file():
            raise CheckpointError(f"{self.root} has no eval/metrics.json: run `{evaluate}`")
        try:
            metrics = json.loads(path.read_text())
        except OSError:
            raise CheckpointError(f"{path} is unreadable: re-run `{evaluate}`") from None
        except ValueError as exc:
            raise CheckpointError(f"{path} is not valid JSON ({' '.join(str(exc).split())}): "
                                  f"re-run `{evaluate}`") from None
        if not isinstance(metrics, dict) or not isinstance(metrics.get("overall"), dict):
            raise CheckpointError(f"{path} has no overall metrics: re-run `{evaluate}`")
        return path, metrics

    def read_eval_predictions(self) -> tuple[np.ndarray, np.ndarray] | None:
        """True and predicted magnifications of ``eval/predictions.csv``, or None when absent.

        Raises:
            CheckpointError: the CSV lacks numeric ``magnification``/``predicted`` columns.
        """
        path = self.eval_dir / "predictions.csv"
        if not path.is_file():
            return None
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        try:
            true = np.array([float(r["magnification"]) for r in rows], dtype=float)
            pred = np.array([float(r["predicted"]) for r in rows], dtype=float)
        except (KeyError, ValueError, TypeError):
            raise CheckpointError(f"{path} lacks numeric magnification/predicted columns: "
                                  f"re-run `{MAG_EVALUATE_HINT.format(run=self.root)}`") from None
        return true, pred

    @property
    def scatter_path(self) -> Path:
        return self.eval_dir / "scatter.png"
