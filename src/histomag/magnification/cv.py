"""Magnification models trained on real sources with randomised acquisition, and their leave-sources-out evaluation.

:func:`train_on_sources` trains a regressor on crops drawn online from real images
(:class:`~histomag.magnification.sources.ScaleSampleDataset`). :func:`cross_validate_sources` leaves whole
groups out (a dataset at one scan resolution, a slide): for each fold it trains on the other
groups and predicts every held-out image at its own scale and box-downsampled, with the same
whole-image inference users get (:func:`histomag.magnification.estimate.estimate_from_rgb`). The pooled
held-out errors calibrate the interval every estimate carries (:class:`IntervalCalibration`).

Layout of a CV folder::

    DIR/fold-<k>/               an ordinary magnification run folder (config, checkpoints, metrics)
    DIR/predictions.csv         one row per held-out image view: group, source_id, true and predicted
                                magnification, log-spread, crops, fold
    DIR/metrics_per_group.csv   per held-out group: median/mean relative error, within 10/20 %,
                                ACC_0.5/1/5, bias, interval coverage
    DIR/summary.json            settings, folds, the interval calibration, pooled metrics
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histomag.magnification.acquisition import AcquisitionSettings
from histomag.data.atomic import atomic_write_csv, atomic_write_json
from histomag.magnification.sources import RealSource, ScaleSampleDataset, eval_views
from histomag.errors import ConfigError, HistomagError
from histomag.magnification.estimate import (
    IntervalCalibration,
    combine,
    combine_estimates,
    floor_low_bound,
    nuclei_estimate,
    rgb_nuclei_crops,
    rgb_predictions,
)
from histomag.magnification.config import MagnifierConfig

#: inference variants compared in CV: name -> (magnification column, log-spread column)
METHODS = {"cnn": ("predicted_magnification", "log_mad"), "cnn_tta": ("predicted_tta", "log_mad_tta"),
           "nuclei": ("predicted_nuclei", "log_mad_nuclei"), "combined": ("predicted_combined", "log_mad_combined")}
#: variants that use the nuclei-size ruler, whose intervals open below its floor
RULER_METHODS = ("nuclei", "combined")
#: test-time scales of the ``cnn_tta`` variant
TTA_SCALES = (1.0, 2.0)
PREDICTION_COLUMNS = ["fold", "group", "source_id", "organ", "true_magnification", "predicted_magnification",
                      "log_mad", "n_crops", "predicted_tta", "log_mad_tta", "predicted_nuclei", "log_mad_nuclei",
                      "predicted_combined", "log_mad_combined", "width", "height"]


@dataclass(frozen=True)
class SourceTraining:
    """How crops are drawn from the sources for one training run."""

    settings: AcquisitionSettings = AcquisitionSettings()
    epoch_size: int = 3072
    val_size: int = 256
    native_share: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        return {"acquisition": self.settings.to_dict(), "epoch_size": self.epoch_size, "val_size": self.val_size,
                "native_share": self.native_share}


def _datamodule(sources: Sequence[RealSource], training: SourceTraining) -> Callable[..., Any]:
    import lightning.pytorch as L

    from histomag.fitloop import make_loader

    class SourceDataModule(L.LightningDataModule):
        def __init__(self, config: MagnifierConfig, mean: Sequence[float], std: Sequence[float]) -> None:
            super().__init__()
            self.config = config
            kw = dict(mag_range=config.mag_range, native_share=training.native_share, mean=mean, std=std)
            self.train_set = ScaleSampleDataset(sources, training.epoch_size, config.crop, settings=training.settings,
                                                **kw)  # type: ignore[arg-type]
            # validation crops come from the training sources (fixed, box-resampled): they steer the
            # learning rate and the best checkpoint; the honest figures come from held-out groups
            self.val_set = ScaleSampleDataset(sources, training.val_size, config.crop, fixed=True, seed=config.seed,
                                              **kw)  # type: ignore[arg-type]

        def train_dataloader(self) -> Any:
            return make_loader(self.train_set, self.config.batch_size, shuffle=False,
                               num_workers=self.config.num_workers, drop_last=True, seed=self.config.seed)

        def calibration_dataloader(self, epoch: int = 0) -> Any:
            return make_loader(self.train_set, self.config.batch_size, shuffle=False,
                               num_workers=self.config.num_workers, drop_last=True,
                               seed=self.config.seed + 1000 + epoch, persistent=False)

        def val_dataloader(self) -> Any:
            return make_loader(self.val_set, self.config.batch_size, shuffle=False,
                               num_workers=self.config.num_workers)

    return SourceDataModule


def train_on_sources(sources: Sequence[RealSource], out_dir: str | Path, config: MagnifierConfig, *,
                     training: SourceTraining = SourceTraining(), progress: bool = True, resume: bool = True,
                     describe: dict[str, Any] | None = None) -> Path:
    """Train a magnification regressor on crops drawn online from ``sources``; returns the run folder."""
    from histomag.magnification.fit import train_magnifier

    if config.is_classifier:
        raise ConfigError("training on sources supports the regressor only; build a magnification set for the "
                          "classifier baseline")
    extra = {"data": "sources", "sources": describe_sources(sources), **training.to_dict(), **(describe or {})}
    return train_magnifier(None, out_dir, config, progress=progress, resume=resume,
                           datamodule=_datamodule(sources, training), extra_config=extra)


def describe_sources(sources: Sequence[RealSource]) -> dict[str, Any]:
    """Per group: number of images and their magnification range (for run configs and model cards)."""
    out: dict[str, Any] = {}
    for g in sorted({s.group for s in sources}):
        mine = [s for s in sources if s.group == g]
        out[g] = {"images": len(mine), "magnification": [round(min(s.magnification for s in mine), 2),
                                                          round(max(s.magnification for s in mine), 2)]}
    return out


def fold_groups(groups: Sequence[str], folds: Sequence[Sequence[str]] | None) -> list[list[str]]:
    """Held-out groups per fold: as given (each name must exist), or one fold per group."""
    names = sorted(set(groups))
    if not folds:
        return [[g] for g in names]
    out = []
    for fold in folds:
        unknown = [g for g in fold if g not in names]
        if unknown:
            raise ConfigError(f"fold names unknown group {unknown[0]!r}; groups are {', '.join(names)}")
        out.append(list(fold))
    return out


def predict_views(model: torch.nn.Module, config: MagnifierConfig, sources: Sequence[RealSource], fold: int,
                  *, n_crops: int = 16, max_views_per_group: int = 120) -> list[dict[str, Any]]:
    """Whole-image estimates of every held-out source at its own scale and box-downsampled.

    Each view gets the plain estimate, the test-time-scale one (:data:`TTA_SCALES`; the ×1 crops
    are predicted once for both), the nuclei-size ruler's and the geometric mean of the last two.
    """
    from histomag.magnification.infer import crop_predictor

    predict = crop_predictor(model, config.crop)
    rows = []
    rng = np.random.default_rng(fold)
    by_group: dict[str, list[RealSource]] = {}
    for s in sources:
        by_group.setdefault(s.group, []).append(s)
    for group, mine in by_group.items():
        views = [v for s in mine for v in eval_views(s, config.crop)]
        if len(views) > max_views_per_group:
            views = [views[i] for i in sorted(rng.choice(len(views), max_views_per_group, replace=False))]
        for v in views:
            row: dict[str, Any] = {"fold": fold, "group": group, "source_id": v.source_id, "organ": v.organ,
                                   "true_magnification": round(v.magnification, 4), "width": v.rgb.shape[1],
                                   "height": v.rgb.shape[0]}
            try:
                by_scale = rgb_predictions(v.rgb, predict, config.crop, n_crops, tta=TTA_SCALES)
                est = combine(by_scale[1.0])
                tta = combine([p for preds in by_scale.values() for p in preds])
                row.update(predicted_magnification=round(est.magnification, 4), log_mad=round(est.log_mad, 5),
                           n_crops=est.n_crops, predicted_tta=round(tta.magnification, 4),
                           log_mad_tta=round(tta.log_mad, 5))
                row.update(nuclei_columns(v.rgb, tta))
            except HistomagError as exc:  # an image without tissue is reported, not fatal
                row.update(predicted_magnification="", n_crops=0, error=str(exc))
            rows.append(row)
    return rows


def nuclei_columns(rgb: np.ndarray, cnn: Any) -> dict[str, Any]:
    """The nuclei-size ruler's estimate of a view, and its geometric mean with the CNN's (empty when it fails)."""
    try:
        nuc = nuclei_estimate(rgb_nuclei_crops(rgb))
    except HistomagError:
        return {}
    both = combine_estimates(cnn, nuc)
    return {"predicted_nuclei": round(nuc.magnification, 4), "log_mad_nuclei": round(nuc.log_mad, 5),
            "predicted_combined": round(both.magnification, 4), "log_mad_combined": round(both.log_mad, 5)}


def magnification_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Relative error of the mpp (= of the magnification ratio), ACC_k, bias (median signed log-ratio)."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    rel = np.abs(true / pred - 1.0)  # relative error of mpp: mpp_pred / mpp_true - 1 = true/pred - 1
    log_ratio = np.log(pred / true)
    return {"n": int(true.size), "median_rel_error": float(np.median(rel)), "mean_rel_error": float(np.mean(rel)),
            "within_10": float(np.mean(rel <= 0.10)), "within_20": float(np.mean(rel <= 0.20)),
            "acc_0.5": float(np.mean(np.abs(pred - true) <= 0.5)), "acc_1": float(np.mean(np.abs(pred - true) <= 1)),
            "acc_5": float(np.mean(np.abs(pred - true) <= 5)), "bias": float(np.median(log_ratio))}


def _valid(rows: Sequence[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    col, _ = METHODS[method]
    return [r for r in rows if r.get(col) not in ("", None)]


def calibrate(rows: Sequence[dict[str, Any]], method: str = "cnn", level: float = 0.9) -> IntervalCalibration:
    """The interval calibration of one inference variant from held-out prediction rows."""
    col, spread = METHODS[method]
    ok = _valid(rows, method)
    return IntervalCalibration.fit([float(r["true_magnification"]) for r in ok], [float(r[col]) for r in ok],
                                   [float(r[spread]) for r in ok], level=level)


def summarise_predictions(rows: Sequence[dict[str, Any]], calibration: IntervalCalibration | None,
                          method: str = "cnn") -> list[dict[str, Any]]:
    """Per-group metric rows (and an ``all`` row), with interval coverage when calibrated."""
    col, spread = METHODS[method]
    ok = _valid(rows, method)
    out = []
    for group in sorted({r["group"] for r in ok}) + ["all"]:
        mine = ok if group == "all" else [r for r in ok if r["group"] == group]
        true = np.array([float(r["true_magnification"]) for r in mine])
        pred = np.array([float(r[col]) for r in mine])
        row: dict[str, Any] = {"method": method, "group": group, **magnification_metrics(true, pred)}
        if calibration is not None:
            mad = np.array([float(r[spread]) for r in mine])
            lo, hi = calibration.bounds(np.log(pred), mad)
            if method in RULER_METHODS:  # as inference does: open below the ruler's floor
                lo = floor_low_bound(lo, np.array([float(r["predicted_nuclei"]) for r in mine]))
            row["coverage"] = float(np.mean((np.log(true) >= lo) & (np.log(true) <= hi)))
            row["median_interval_width"] = float(np.median(np.exp(hi - lo) - 1.0))
        out.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    return out


def cross_validate_sources(sources: Sequence[RealSource], out_dir: str | Path, config: MagnifierConfig, *,
                           training: SourceTraining = SourceTraining(),
                           folds: Sequence[Sequence[str]] | None = None, level: float = 0.9, n_crops: int = 16,
                           progress: bool = True) -> dict[str, Any]:
    """Leave-groups-out cross-validation; writes predictions, per-group metrics and the interval calibration.

    A fold whose run folder already holds ``predictions.csv`` is not redone (resumable).

    Returns:
        The summary (also written to ``DIR/summary.json``).
    """
    from histomag.magnification.infer import load_magnifier

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fold_sets = fold_groups([s.group for s in sources], folds)
    rows: list[dict[str, Any]] = []
    for k, held in enumerate(fold_sets):
        fold_dir = out_dir / f"fold-{k}"
        done = fold_dir / "predictions.csv"
        if done.is_file():
            with open(done, newline="") as fh:
                rows.extend(csv.DictReader(fh))
            continue
        train = [s for s in sources if s.group not in held]
        test = [s for s in sources if s.group in held]
        if not train:
            raise ConfigError(f"fold {k} leaves no training source; hold out fewer groups")
        if not (fold_dir / "train_summary.json").is_file():  # a trained fold is only re-predicted
            train_on_sources(train, fold_dir, config, training=training, progress=progress,
                             describe={"held_out": list(held)})
        model, cfg = load_magnifier(fold_dir)
        fold_rows = predict_views(model, cfg, test, k, n_crops=n_crops)
        atomic_write_csv(done, PREDICTION_COLUMNS + ["error"], fold_rows)
        rows.extend(fold_rows)
    atomic_write_csv(out_dir / "predictions.csv", PREDICTION_COLUMNS + ["error"], rows)
    methods = [m for m in METHODS if _valid(rows, m)]
    calibrations = {m: calibrate(rows, m, level) for m in methods}
    per_group = [r for m in methods for r in summarise_predictions(rows, calibrations[m], m)]
    atomic_write_csv(out_dir / "metrics_per_group.csv", list(per_group[0].keys()), per_group)
    # the default inference is the variant with the lowest pooled median relative error
    pooled = {r["method"]: r["median_rel_error"] for r in per_group if r["group"] == "all"}
    best = min(pooled, key=pooled.get)  # type: ignore[arg-type]
    summary = {"folds": fold_sets, "config": config.to_dict(), "training": training.to_dict(),
               "method": best, "tta": [1.0] if best == "cnn" else list(TTA_SCALES),
               "interval": calibrations[best].to_dict(),
               "intervals": {m: c.to_dict() for m, c in calibrations.items()}, "metrics": per_group}
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def read_cv_summary(cv_dir: str | Path) -> dict[str, Any]:
    """The ``summary.json`` of a CV folder."""
    return json.loads((Path(cv_dir) / "summary.json").read_text())
