"""Reading run folders for the report (no torch: only JSON, CSV and PNG files are read).

Every file is read through its folder's owner: :class:`~histomag.dmsl.runfolder.RunFolder` for a DMSL
run (``histomag dmsl train``: ``config.json`` and ``metrics.json``; its folds' ``predictions.csv``, for ROC
curves, and ``split.json`` where present) and :class:`~histomag.magnification.runfolder.MagnificationRun` for
a magnification run (``histomag magnification train``: ``config.json`` and ``eval/metrics.json`` from
``histomag magnification evaluate``; ``eval/predictions.csv`` and ``eval/scatter.png`` where present), schema
version checks included. Anything else raises :class:`~histomag.errors.CheckpointError` with a one-line message
that names the missing file and the call that makes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from histomag.dmsl.runfolder import MODEL_TYPE as DMSL_TYPE
from histomag.dmsl.runfolder import DMSL_EVALUATE_API, DMSL_TRAIN_API, FoldPredictions, RunFolder
from histomag.errors import CheckpointError
from histomag.magnification.runfolder import MODEL_TYPES as MAG_TYPES
from histomag.magnification.runfolder import MagnificationRun

__all__ = ["DMSLRun", "FoldPredictions", "MagRun", "Run", "load_run", "unique_names"]

#: the commands the report's pages tell their reader to run (page text, not errors)
DMSL_TRAIN = "histomag dmsl train DATA --out {run}"
DMSL_EVALUATE = "histomag dmsl evaluate {run}"
MAG_TRAIN = "histomag magnification train DATA --out {run}"
MAG_EVALUATE = "histomag magnification evaluate {run}"
#: how a magnification run folder is made, in API terms (errors speak the API; the CLI names its commands)
MAG_TRAIN_API = "histomag.magnification.fit.train_magnifier(DATA, {run}, config)"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclass(frozen=True)
class DMSLRun:
    """A DMSL (or baseline) cross-validation run folder."""

    path: Path
    name: str
    config: dict[str, Any]
    data: str
    classes: list[str]
    tuple_mode: str | None
    tile_settings: dict[str, Any]
    metrics: dict[str, Any]
    folds: list[FoldPredictions]
    missing_predictions: list[int]
    date: str

    @property
    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        return self.metrics["summary"]

    @property
    def label(self) -> str:
        """Method, backbone and magnification combination, e.g. ``DMSL (tiny) 40x+20x``."""
        from histomag.dmsl.modes import mode_method

        c = self.config
        mags = "+".join(f"{float(m):g}x" for m in c.get("magnifications", []))
        return f"{mode_method(str(c.get('mode')))} ({c.get('backbone')}) {mags}".strip()


@dataclass(frozen=True)
class MagRun:
    """A magnification regressor or classifier run folder with its evaluation."""

    path: Path
    name: str
    model_type: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    eval_dir: Path
    scatter: Path | None
    true: np.ndarray | None = None
    pred: np.ndarray | None = None
    date: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``regressor`` or ``classifier``."""
        return self.model_type.rsplit("-", 1)[-1]


Run = DMSLRun | MagRun


def _date(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")


def _read_json(path: Path, hint: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError:
        raise CheckpointError(f"{path} is unreadable: {hint}") from None
    except ValueError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({_one_line(exc)}): {hint}") from None


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read a DMSL or magnification run folder.

    Args:
        path: the run folder.
        name: display name (default: the folder name).

    Raises:
        CheckpointError: not a folder, no ``config.json``, an unknown model type, or a missing
            metrics file (the one-line message names the command that makes it).
    """
    path = Path(path)
    name = name or path.resolve().name or str(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a run folder: make one with `{DMSL_TRAIN_API.format(run=path)}` "
                              f"or `{MAG_TRAIN_API.format(run=path)}`")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path} has no config.json: run `{DMSL_TRAIN_API.format(run=path)}` "
                              f"or `{MAG_TRAIN_API.format(run=path)}`")
    meta = _read_json(config_path, f"re-run `{DMSL_TRAIN_API.format(run=path)}` or `{MAG_TRAIN_API.format(run=path)}`")
    model_type = meta.get("model_type") if isinstance(meta, dict) else None
    if model_type == DMSL_TYPE:
        return _load_dmsl(path, name)
    if model_type in MAG_TYPES:
        return _load_mag(path, name)
    raise CheckpointError(f"{path} holds a {_one_line(model_type or 'unknown')} run, which the report does not "
                          f"know: give DMSL runs (`{DMSL_TRAIN_API.format(run='RUN')}`) or magnification runs "
                          f"(`{MAG_TRAIN_API.format(run='RUN')}`)")


# ----- DMSL -------------------------------------------------------------------------------------
def _load_dmsl(path: Path, name: str) -> DMSLRun:
    folder = RunFolder(path)
    meta = folder.read_meta()  # the model type, the schema version, the config and the classes checked
    metrics_path = folder.metrics_path
    if not metrics_path.is_file():
        raise CheckpointError(f"{path} has no metrics.json: run `{DMSL_TRAIN_API.format(run=path)}` "
                              f"(or `{DMSL_EVALUATE_API.format(run=path)}` when its folds finished)")
    metrics = _read_json(metrics_path, f"run `{DMSL_EVALUATE_API.format(run=path)}`")
    summary = metrics.get("summary") if isinstance(metrics, dict) else None
    if not isinstance(summary, dict) or not {"patch", "patient"} <= set(summary):
        raise CheckpointError(f"{metrics_path} has no patch and patient summary: run "
                              f"`{DMSL_EVALUATE_API.format(run=path)}`")
    classes = [str(c) for c in meta["classes"]]
    n_folds = int(meta["config"].get("folds") or len(metrics.get("folds", [])) or 0)
    folds, missing = [], []
    for k in range(1, n_folds + 1):
        fold = folder.read_predictions(k, classes)
        if fold is None:
            missing.append(k)
        else:
            folds.append(fold)
    return DMSLRun(path=path, name=name, config=dict(meta["config"]), data=str(meta.get("data", "")),
                   classes=classes, tuple_mode=meta.get("tuple_mode"),
                   tile_settings=dict(meta.get("tile_settings") or {}), metrics=metrics, folds=folds,
                   missing_predictions=missing, date=_date(metrics_path))


# ----- magnification ----------------------------------------------------------------------------
def _load_mag(path: Path, name: str) -> MagRun:
    run = MagnificationRun(path)
    meta = run.read_meta()
    metrics_path, metrics = run.read_eval_metrics()
    true_pred = run.read_eval_predictions()
    true, pred = true_pred if true_pred is not None else (None, None)
    scatter = run.scatter_path
    return MagRun(path=path, name=name, model_type=str(meta["model_type"]),
                  config={k: v for k, v in meta.items() if k not in ("versions", "version")}, metrics=metrics,
                  eval_dir=run.eval_dir, scatter=scatter if scatter.is_file() else None, true=true, pred=pred,
                  date=_date(metrics_path), extra={"versions": meta.get("versions", {})})


def unique_names(paths: list[Path]) -> list[str]:
    """Display names of run folders: the folder name, with parents added where names collide."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(pp[-d:]) for pp, d in zip(parts, depth)]
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes:
            return names
        grown = False
        for i, n in enumerate(names):
            if n in clashes and depth[i] < len(parts[i]):
                depth[i] += 1
                grown = True
        if not grown:  # the same folder given twice
            return [n if names.count(n) == 1 else f"{n} #{names[:i + 1].count(n)}" for i, n in enumerate(names)]
