"""Metrics of magnification prediction (Hagnifinder's ACC_N and more), their files, and run evaluation.

Regression metrics compare predicted with true magnifications: ``acc_N`` is the share with
``|p - t| <= N`` for N = 0.5, 1, 5 (Hagnifinder's ACC_N), ``mae`` the mean ``|p - t|``, ``mre``
the mean ``|p - t| / t`` and ``within_10pct`` the share with ``|p - t| / t <= 0.1``; each
overall, per true magnification and per organ, plus a confusion matrix of rounded values.
Level metrics (the classification baseline's view) map both onto the nearest of a few levels
(4x/10x/20x/40x, nearest in log space) for the rows whose true magnification is near a level,
so a regressor and a classifier are compared on the same rows.

Example:
    >>> m = magnification_metrics([10, 40], [10.4, 35])
    >>> m["overall"]["acc_1"], m["overall"]["mae"]
    (0.5, 2.7)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histomag.data.atomic import atomic_write_bytes, atomic_write_csv, atomic_write_json
from histomag.errors import ConfigError, DatasetError

ACC_THRESHOLDS: tuple[float, ...] = (0.5, 1.0, 5.0)
RELATIVE_THRESHOLD = 0.1
DEFAULT_LEVELS: tuple[float, ...] = (4.0, 10.0, 20.0, 40.0)
SUMMARY_KEYS: tuple[str, ...] = ("n", *(f"acc_{n:g}" for n in ACC_THRESHOLDS), "mae", "mre", "within_10pct")
_EPS = 1e-9  # thresholds are inclusive despite float rounding (10.4 - 10 = 0.4000000000000004)


def _arrays(true: Sequence[float], pred: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(true, dtype=np.float64).ravel()
    p = np.asarray(pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ConfigError(f"true and pred differ in length: {t.size} vs {p.size}")
    if t.size and not (t > 0).all():
        raise ConfigError("true magnifications must be > 0")
    return t, p


def _none_if_nan(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def error_summary(true: Sequence[float], pred: Sequence[float]) -> dict[str, float | int | None]:
    """``n``, ``acc_0.5``, ``acc_1``, ``acc_5``, ``mae``, ``mre``, ``within_10pct`` (None when n = 0)."""
    t, p = _arrays(true, pred)
    err = np.abs(p - t)
    rel = err / t if t.size else err
    out: dict[str, float | int | None] = {"n": int(t.size)}
    if not t.size:
        return {**out, **{k: None for k in SUMMARY_KEYS[1:]}}
    for n in ACC_THRESHOLDS:
        out[f"acc_{n:g}"] = float(np.mean(err <= n + _EPS))
    out["mae"] = _none_if_nan(float(err.mean()))
    out["mre"] = _none_if_nan(float(rel.mean()))
    out["within_10pct"] = float(np.mean(rel <= RELATIVE_THRESHOLD + _EPS))
    return out


def magnification_key(value: float) -> str:
    """Label of a magnification in tables and JSON keys (``10``, ``2.5``)."""
    return f"{float(value):g}"


def confusion(true_labels: Sequence[Any], pred_labels: Sequence[Any],
              labels: Sequence[Any] | None = None) -> dict[str, list]:
    """Confusion matrix ``{"labels": [...], "matrix": [[...]]}``; rows true, columns predicted.

    Args:
        true_labels: true label per item.
        pred_labels: predicted label per item.
        labels: row/column order (default: sorted union of both); items with other labels are
            not counted.
    """
    if labels is None:
        labels = sorted(set(true_labels) | set(pred_labels))
    index = {lab: i for i, lab in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(true_labels, pred_labels):
        if t in index and p in index:
            matrix[index[t]][index[p]] += 1
    return {"labels": list(labels), "matrix": matrix}


def _round_half_up(values: np.ndarray) -> list[int]:
    return [int(v) for v in np.floor(values + 0.5)]


def nearest_levels(values: Sequence[float], levels: Sequence[float]) -> np.ndarray:
    """The nearest level (in log space; ties go to the lower level) of each value."""
    lv = np.asarray(sorted(float(v) for v in levels))
    v = np.log(np.clip(np.asarray(values, dtype=np.float64), 1e-12, None))
    return lv[np.abs(v[:, None] - np.log(lv)[None, :]).argmin(axis=1)] if len(v) else lv[:0]


def level_metrics(true: Sequence[float], pred: Sequence[float], levels: Sequence[float] = DEFAULT_LEVELS,
                  tolerance: float | None = 0.02) -> dict[str, Any]:
    """Accuracy and confusion at discrete levels (the classification baseline's metrics).

    Args:
        true: true magnifications.
        pred: predicted magnifications (a regressor's values or a classifier's levels).
        levels: the levels, e.g. ``(4, 10, 20, 40)``.
        tolerance: rows count when their true magnification is within this relative distance
            of a level (None: every row, with its nearest level).

    Returns:
        ``{"levels", "tolerance", "n", "accuracy", "per_level": {level: {"n", "accuracy"}},
        "confusion": {"labels", "matrix"}}``; accuracy is None when no row counts.
    """
    t, p = _arrays(true, pred)
    lv = sorted(float(v) for v in levels)
    t_level = nearest_levels(t, lv)
    keep = np.ones(t.size, bool) if tolerance is None else np.abs(t / t_level - 1.0) <= tolerance + _EPS
    tl, pl = t_level[keep], nearest_levels(p[keep], lv)
    per_level = {}
    for level in lv:
        mine = tl == level
        per_level[magnification_key(level)] = {
            "n": int(mine.sum()), "accuracy": float(np.mean(pl[mine] == level)) if mine.any() else None}
    keys = [magnification_key(v) for v in lv]
    conf = confusion([magnification_key(v) for v in tl], [magnification_key(v) for v in pl], keys)
    return {"levels": lv, "tolerance": tolerance, "n": int(keep.sum()),
            "accuracy": float(np.mean(tl == pl)) if keep.any() else None, "per_level": per_level, "confusion": conf}


def magnification_metrics(true: Sequence[float], pred: Sequence[float], organs: Sequence[str] | None = None, *,
                          levels: Sequence[float] | None = DEFAULT_LEVELS,
                          level_tolerance: float | None = 0.02) -> dict[str, Any]:
    """All regression metrics of a set of predictions.

    Args:
        true: true magnifications (> 0).
        pred: predicted magnifications.
        organs: organ per item ("" counts as ``unknown``); None skips ``per_organ``.
        levels: levels for :func:`level_metrics` (None skips them).
        level_tolerance: see :func:`level_metrics`.

    Returns:
        ``{"overall": summary, "per_magnification": {mag: summary}, "per_organ": {organ: summary},
        "confusion": {"labels", "matrix"} of half-up rounded values, "levels": level metrics}``
        where a summary is :func:`error_summary`'s dict.
    """
    t, p = _arrays(true, pred)
    out: dict[str, Any] = {"overall": error_summary(t, p)}
    out["per_magnification"] = {magnification_key(m): error_summary(t[t == m], p[t == m]) for m in np.unique(t)}
    if organs is not None:
        org = np.asarray([(o or "").strip() or "unknown" for o in organs], dtype=object)
        if org.size != t.size:
            raise ConfigError(f"organs has {org.size} entries for {t.size} predictions")
        out["per_organ"] = {str(o): error_summary(t[org == o], p[org == o]) for o in sorted(set(org.tolist()))}
    out["confusion"] = confusion(_round_half_up(t), _round_half_up(p))
    if levels is not None:
        out["levels"] = level_metrics(t, p, levels, level_tolerance)
    return out


def write_metrics(metrics: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``metrics.json``, ``metrics_per_magnification.csv`` (and ``metrics_per_organ.csv``).

    Returns:
        The written paths.
    """
    out = Path(out_dir)
    paths = [out / "metrics.json", out / "metrics_per_magnification.csv"]
    atomic_write_json(paths[0], metrics)
    rows = [{"magnification": k, **v} for k, v in metrics.get("per_magnification", {}).items()]
    atomic_write_csv(paths[1], ["magnification", *SUMMARY_KEYS], rows)
    if "per_organ" in metrics:
        paths.append(out / "metrics_per_organ.csv")
        atomic_write_csv(paths[2], ["organ", *SUMMARY_KEYS],
                         [{"organ": k, **v} for k, v in metrics["per_organ"].items()])
    return paths


def scatter_plot(true: Sequence[float], pred: Sequence[float], path: str | Path, *, title: str | None = None,
                 log_scale: bool = True) -> Path:
    """Save a true-vs-predicted scatter PNG with the identity line (matplotlib Agg, no pyplot state)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t, p = _arrays(true, pred)
    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rng = np.random.default_rng(0)
    jitter = 1.0 + rng.uniform(-0.015, 0.015, t.size) if log_scale else rng.uniform(-0.15, 0.15, t.size)
    ax.scatter(t * jitter if log_scale else t + jitter, p, s=12, alpha=0.5, linewidths=0)
    finite = p[np.isfinite(p) & (p > 0)] if log_scale else p[np.isfinite(p)]
    lo = min(t.min(initial=1.0), finite.min(initial=1.0))
    hi = max(t.max(initial=40.0), finite.max(initial=40.0))
    if log_scale:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.set_yscale("log")
        lo, hi = lo / 1.1, hi * 1.1
        ticks = [v for v in (0.5, 1, 2, 5, 10, 20, 40, 100) if lo <= v <= hi]
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="identity")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("true magnification")
    ax.set_ylabel("predicted magnification")
    ax.set_title(title or f"n = {t.size}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None = None, split: str = "test", *,
                 n_crops: int = 5, out_dir: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Predict a split of a magnification set with a run's best model and write the metrics.

    Writes ``metrics.json``, ``metrics_per_magnification.csv``, ``metrics_per_organ.csv``,
    ``predictions.csv`` and ``scatter.png`` into ``out_dir`` (default ``RUN/eval``).

    Args:
        run_dir: a run folder of :func:`~histomag.magnification.fit.train_magnifier`.
        data_dir: the magnification set (default: the one the run was trained on).
        split: ``train``, ``val`` or ``test``.
        n_crops: crops per image (median / mean probability; see ``predict_magnifications``).
        out_dir: where to write (default ``RUN/eval``).
        progress: show a progress bar on stderr.

    Returns:
        The metrics (as in :func:`magnification_metrics`, plus ``"run"``: what was evaluated).

    Raises:
        CheckpointError: the run has no usable checkpoint.
        DatasetError: the set has no rows in ``split``.
    """
    from histomag.progress import progress_bar
    from histomag.magnification.data import load_rgb, read_manifest
    from histomag.magnification.infer import load_magnifier, predict_magnifications
    from histomag.magnification.runfolder import MagnificationRun

    run = Path(run_dir)
    model, config = load_magnifier(run)
    data = Path(data_dir) if data_dir is not None else MagnificationRun(run).data_dir()
    records = read_manifest(data, split)
    if not records:
        raise DatasetError(f"magnification set {data} has no {split!r} rows to evaluate")
    preds: list[float] = []
    chunk = 64
    with progress_bar(progress) as bar:
        task = bar.add_task(f"predict {split}", total=len(records)) if bar else None
        for start in range(0, len(records), chunk):
            part = records[start : start + chunk]
            preds.extend(predict_magnifications(model, [load_rgb(r.image) for r in part], config.crop, n_crops=n_crops))
            if bar is not None and task is not None:
                bar.advance(task, len(part))
    true = [r.magnification for r in records]
    metrics = magnification_metrics(true, preds, [r.organ for r in records], levels=config.levels,
                                    level_tolerance=config.level_tolerance)
    metrics["run"] = {"run_dir": str(run), "data_dir": str(data), "split": split, "n_crops": n_crops,
                      "model_type": config.model_type, "backbone": config.backbone, "crop": config.crop}
    out = Path(out_dir) if out_dir is not None else MagnificationRun(run).eval_dir
    write_metrics(metrics, out)
    atomic_write_csv(out / "predictions.csv", ["image", "source_id", "organ", "magnification", "predicted"],
                     [[str(r.image.relative_to(data)) if r.image.is_relative_to(data) else str(r.image),
                       r.source_id, r.organ, f"{r.magnification:g}", f"{p:.4f}"] for r, p in zip(records, preds)])
    scatter_plot(true, preds, out / "scatter.png", title=f"{config.model_type} on {split} (n = {len(true)})")
    return metrics


COMPARISON_COLUMNS = ("name", "model_type", "backbone", "n", "acc_0.5", "acc_1", "acc_5", "mae", "mre",
                      "within_10pct", "level_n", "level_accuracy")


def compare_runs(runs: dict[str, str | Path], data_dir: str | Path | None = None, split: str = "test", *,
                 n_crops: int = 5, out_path: str | Path | None = None) -> list[dict[str, Any]]:
    """Evaluate several runs (e.g. the regressor and the level classifier) on the same split.

    Each run is evaluated with :func:`evaluate_run` (files in its ``eval/``); the level metrics
    of all runs count the same rows (those within the level tolerance of a level).

    Args:
        runs: display name -> run folder.
        data_dir: the magnification set (default: each run's own training set).
        split: the split to evaluate.
        n_crops: crops per image.
        out_path: also write the table as CSV here.

    Returns:
        One row per run with :data:`COMPARISON_COLUMNS`.
    """
    rows = []
    for name, run in runs.items():
        m = evaluate_run(run, data_dir, split, n_crops=n_crops)
        lv = m.get("levels", {})
        rows.append({"name": name, "model_type": m["run"]["model_type"], "backbone": m["run"]["backbone"],
                     **m["overall"], "level_n": lv.get("n"), "level_accuracy": lv.get("accuracy")})
    if out_path is not None:
        atomic_write_csv(Path(out_path), COMPARISON_COLUMNS, rows)
    return rows
