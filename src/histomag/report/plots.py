"""Matplotlib figures of the report, returned as PNG bytes (Agg canvas, no pyplot state).

ROC curves follow the metric conventions of :mod:`histomag.dmsl.metrics`: with two classes
the positive class is index 1; with more, one curve per class (one-vs-rest).
"""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: width of a full-width figure in inches at :data:`DPI` (1000 px, below the page width)
FULL_WIDTH, DPI = 10.0, 100
LEVELS = ("patch", "patient")
DASHES = ("-", "--", "-.", ":")
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` on an Agg canvas (thread-safe, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Any) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


# ----- ROC --------------------------------------------------------------------------------------
def level_sets(folds: Sequence[Any]) -> dict[str, list[tuple[int, np.ndarray, np.ndarray]]]:
    """``{"patch" | "patient": [(fold, labels, probs), ...]}`` from :class:`FoldPredictions`.

    The patient level averages each ``(patient, label)`` group's probabilities
    (:func:`histomag.dmsl.metrics.patient_level`), as the metrics do.
    """
    from histomag.dmsl.metrics import patient_level

    out: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {"patch": [], "patient": []}
    for f in folds:
        out["patch"].append((f.fold, f.y, f.probs))
        _, g_y, g_p = patient_level(f.patients, f.y, f.probs)
        out["patient"].append((f.fold, g_y, g_p))
    return out


def _roc(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    from sklearn.metrics import auc, roc_curve

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    fpr, tpr, _ = roc_curve(positive, score)
    return fpr, tpr, float(auc(fpr, tpr))


def roc_png(folds: Sequence[Any], classes: Sequence[str], title: str) -> bytes | None:
    """Patch- and patient-level ROC curves of one run; None when no fold has predictions.

    Two classes: a thin curve per fold and a thick pooled one (all folds' test predictions
    together), AUC in the legend. More classes: pooled one-vs-rest curves, one per class.
    """
    if not folds:
        return None
    sets = level_sets(folds)
    fig = new_figure(FULL_WIDTH, 4.6)
    axes = fig.subplots(1, 2)
    for ax, level in zip(axes, LEVELS):
        parts = sets[level]
        y = np.concatenate([p[1] for p in parts])
        probs = np.concatenate([p[2] for p in parts])
        if len(classes) == 2:
            for k, (fold, fy, fp) in enumerate(parts):
                curve = _roc(fy == 1, fp[:, 1])
                if curve is not None:
                    ax.plot(curve[0], curve[1], lw=1, alpha=0.55, color=COLOURS[(k + 2) % len(COLOURS)],
                            label=f"fold {fold} (AUC {curve[2]:.3f})")
            pooled = _roc(y == 1, probs[:, 1])
            if pooled is not None:
                ax.plot(pooled[0], pooled[1], lw=2.4, color="#1f3b73", label=f"pooled (AUC {pooled[2]:.3f})")
            positive = f"positive class: {classes[1]}"
        else:
            for c, name in enumerate(classes):
                curve = _roc(y == c, probs[:, c])
                if curve is not None:
                    ax.plot(curve[0], curve[1], lw=1.8, color=COLOURS[c % len(COLOURS)],
                            label=f"{name} vs rest (AUC {curve[2]:.3f})")
            positive = "one-vs-rest, folds pooled"
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#888888")
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate", ylabel="true positive rate",
               title=f"{level} level (n = {len(y)}; {positive})", aspect="equal")
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "one class only: no ROC", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return to_png(fig)


def roc_compare_png(runs: Sequence[tuple[str, Sequence[Any]]], title: str = "") -> bytes | None:
    """Pooled ROC curves of several two-class runs on one patch-level and one patient-level panel.

    Args:
        runs: ``(label, folds)`` per run (:class:`FoldPredictions` of two-class runs).
        title: figure title.
    """
    runs = [(label, folds) for label, folds in runs if folds]
    if not runs:
        return None
    fig = new_figure(FULL_WIDTH, 4.9)
    axes = fig.subplots(1, 2)
    for ax, level in zip(axes, LEVELS):
        for k, (label, folds) in enumerate(runs):
            parts = level_sets(folds)[level]
            y = np.concatenate([p[1] for p in parts])
            probs = np.concatenate([p[2] for p in parts])
            curve = _roc(y == 1, probs[:, 1])
            if curve is not None:
                ax.plot(curve[0], curve[1], lw=2, color=COLOURS[k % len(COLOURS)], ls=DASHES[k % len(DASHES)],
                        label=f"{label} (AUC {curve[2]:.3f})")
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#888888")
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate", ylabel="true positive rate",
               aspect="equal")
        ax.set_title(f"{level} level, folds pooled", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return to_png(fig)


# ----- confusion --------------------------------------------------------------------------------
def confusion_png(matrices: Mapping[str, np.ndarray], classes: Sequence[str], title: str) -> bytes:
    """Pooled confusion matrices (rows: truth), one panel per level: counts and row shares."""
    n = len(classes)
    side = min(4.8, 2.0 + 0.5 * n)
    fig = new_figure(min(FULL_WIDTH, side * len(matrices) + 0.4), side + 0.5)
    axes = np.atleast_1d(fig.subplots(1, len(matrices)))
    for ax, (level, matrix) in zip(axes, matrices.items()):
        m = np.asarray(matrix, dtype=float)
        share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(m[i, j])}\n{100 * share[i, j]:.0f}%", ha="center", va="center",
                        fontsize=12 if n <= 3 else 9,
                        color="white" if share[i, j] > 0.6 else "#222222")
        ax.set_xticks(range(n), [str(c) for c in classes], rotation=30 if n > 3 else 0,
                      ha="right" if n > 3 else "center", fontsize=10)
        ax.set_yticks(range(n), [str(c) for c in classes], fontsize=10)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{level} level (n = {int(m.sum())})", fontsize=11)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return to_png(fig)


# ----- data fraction ----------------------------------------------------------------------------
#: one line of :func:`fraction_png`: label, fractions, {level: {metric key: [(mean, std) per fraction]}}
FractionLine = tuple[str, Sequence[float], Mapping[str, Mapping[str, Sequence[tuple[float, float]]]]]


def fraction_png(lines: Sequence[FractionLine],
                 metrics: Sequence[tuple[str, str]] = (("ACC", "accuracy"), ("F1", "f1"), ("AUC", "auc"))) -> bytes:
    """Metric (mean ± std over folds) versus training fraction, one line per settings group.

    Args:
        lines: ``(label, fractions, {level: {metric key: [(mean, std) per fraction]}})``.
        metrics: ``(column title, metric key)`` panels per level row.
    """
    fig = new_figure(FULL_WIDTH, 6.4)
    axes = fig.subplots(len(LEVELS), len(metrics), squeeze=False)
    for r, level in enumerate(LEVELS):
        for c, (title, key) in enumerate(metrics):
            ax = axes[r][c]
            for k, (label, fractions, values) in enumerate(lines):
                stats = values[level][key]
                mean = np.array([s[0] for s in stats], dtype=float)
                std = np.array([s[1] for s in stats], dtype=float)
                x = 100 * np.asarray(fractions, dtype=float)
                ax.errorbar(x, mean, yerr=np.nan_to_num(std), marker="o", ms=4, lw=1.6, capsize=3,
                            color=COLOURS[k % len(COLOURS)], label=label)
            lows = [m - (s if math.isfinite(s) else 0.0) for _, _, v in lines for m, s in v[level][key]
                    if math.isfinite(m)]
            ax.set_ylim(max(-0.02, min(lows, default=0.0) - 0.05), 1.02)  # a metric lives in [0, 1]
            ax.set_title(f"{title}, {level} level", fontsize=10)
            ax.set_xlabel("training data used (%)")
            ax.grid(alpha=0.3)
            ticks = sorted({round(100 * f, 1) for _, fr, _ in lines for f in fr})
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return to_png(fig)


# ----- magnification ----------------------------------------------------------------------------
def level_bars_png(levels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]]) -> bytes:
    """Grouped bars of per-level accuracy (e.g. the regressor and the 4-level classifier)."""
    fig = new_figure(7.0, 3.8)
    ax = fig.subplots()
    x = np.arange(len(levels))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series):
        vals = np.array([math.nan if v is None else float(v) for v in values])
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, np.nan_to_num(vals), width,
                      color=COLOURS[k % len(COLOURS)], label=name)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01, "n/a" if math.isnan(v) else f"{v:.2f}",
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, list(levels))
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy at the nearest level")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="upper center", ncol=min(4, len(series)), fontsize=9,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return to_png(fig)


def scatter_png(true: np.ndarray, pred: np.ndarray, title: str) -> bytes:
    """True-vs-predicted magnification scatter (the one ``histomag magnification evaluate`` draws)."""
    from histomag.magnification.metrics import scatter_plot

    with tempfile.TemporaryDirectory() as tmp:
        path = scatter_plot(true, pred, Path(tmp) / "scatter.png", title=title)
        return path.read_bytes()
