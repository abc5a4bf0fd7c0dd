"""Paired comparison of two DMSL runs: the difference per metric with a bootstrap 95% interval.

Two runs trained on the same data with the same seed have the same folds (the split depends only
on the labels, the patients and the seed), so every test tuple is predicted by both: the
comparison is *paired*. For each ``(seed, fold)`` the metric is computed for both runs on the same
test set and differenced; the point estimate is the mean difference over the pairs. The interval
is a percentile bootstrap that resamples the test patients (or image groups) of every
``(seed, fold)`` with replacement — the same draw for both runs — and averages the differences
again, 2,000 times by default.

A run operand is a run folder, a multi-seed run folder (``train --seeds K``, see
:class:`~histomag.dmsl.runfolder.SeedRuns`), ``RUN@10x`` (one head of a fused run on its own: how
good is a branch inside the fused model?) or ``RUN_X+RUN_Y``: the *late fusion* of two runs, the
mean of their probabilities (e.g. two single-magnification runs, the free baseline that a trained
fusion must beat).

Levels: ``tuple`` (each tuple), ``slide`` (the mean of a slide's or image's tuple probabilities;
the image level of snapshot datasets) and ``patient`` (the mean over a patient's tuples).

Example:
    >>> from histomag.dmsl.compare import compare_runs  # doctest: +SKIP
    >>> compare_runs("runs/sim", "runs/mm").table()  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histomag.dmsl.runfolder import FoldPredictions, RunFolder, SeedRuns
from histomag.errors import CheckpointError, ConfigError

LEVELS = ("tuple", "slide", "patient")
COMPARE_METRICS = ("auc", "accuracy", "f1")
#: bootstrap draws unless asked otherwise
DEFAULT_BOOT = 2000


# ----- operands: a run, a multi-seed run, or the late fusion of two --------------------------------
@dataclass(frozen=True)
class Operand:
    """One side of a comparison: per seed, per fold, its test predictions."""

    name: str
    classes: tuple[str, ...]
    folds: dict[tuple[int, int], FoldPredictions]  # (seed, fold) -> predictions


def _read_run(path: Path) -> tuple[dict[tuple[int, int], FoldPredictions], tuple[str, ...]]:
    """A run's (or multi-seed run's) test predictions by (seed, fold), and its classes."""
    runs = SeedRuns(path).runs() if SeedRuns(path).exists() else [RunFolder(path).load()]
    out: dict[tuple[int, int], FoldPredictions] = {}
    for run in runs:
        config = run.config
        if config.folds < 2:
            raise ConfigError(f"{run.root} is one final model without test folds; compare cross-validated runs "
                              "(folds >= 2)")
        for k in range(1, config.folds + 1):
            fold = run.read_predictions(k, run.class_names)
            if fold is None:
                raise CheckpointError(f"{run.predictions_path(k)} is missing: finish or evaluate the run first "
                                      f"(histomag.dmsl.cv.evaluate_cv_run({run.root}))")
            out[(int(config.seed), k)] = fold
    return out, tuple(runs[0].class_names)


def _read_part(part: str) -> tuple[dict[tuple[int, int], FoldPredictions], tuple[str, ...]]:
    """One run, or one head of a fused run (``RUN@10x``: that head's own probabilities)."""
    path, _, head = part.rpartition("@") if "@" in part and not Path(part).exists() else (part, "", "")
    folds, classes = _read_run(Path(path))
    if not head:
        return folds, classes
    out = {}
    for key, fold in folds.items():
        if not fold.branches or head not in fold.branches:
            have = ", ".join(fold.branches or {}) or "none recorded"
            raise ConfigError(f"{path} has no head {head!r} in seed {key[0]} fold {key[1]} (heads: {have}); name a "
                              "head of a fused run like RUN@10x")
        out[key] = FoldPredictions(fold.fold, fold.patients, fold.y, fold.branches[head], fold.train_fraction,
                                   fold.tuple_ids, fold.slides, {})
    return out, classes


def load_operand(spec: str | Path) -> Operand:
    """A run folder, a multi-seed run folder, ``RUN@10x`` (one head of a fused run on its own), or
    ``"RUN_X+RUN_Y"`` (late fusion: mean probabilities).

    Raises:
        CheckpointError: a missing run or fold predictions.
        ConfigError: an unknown head, late-fusion runs with other classes or other test tuples (other folds or data).
    """
    text = str(spec)
    parts = text.split("+") if "+" in text and not Path(text).exists() else [text]
    reads = [_read_part(p) for p in parts]
    classes = reads[0][1]
    if any(c != classes for _, c in reads[1:]):
        raise ConfigError(f"late fusion {text}: the runs have different classes; fuse runs of the same dataset")
    if len(reads) == 1:
        return Operand(text, classes, reads[0][0])
    keys = set(reads[0][0])
    for other, _ in reads[1:]:
        keys &= set(other)
    if not keys:
        raise ConfigError(f"late fusion {text}: the runs share no (seed, fold); train them with the same seeds and folds")
    folds = {}
    for key in sorted(keys):
        members = [r[key] for r, _ in reads]
        aligned = [_align(members[0], m, f"late fusion {text}, seed {key[0]} fold {key[1]}") for m in members]
        first = members[0]
        folds[key] = FoldPredictions(key[1], first.patients, first.y, np.mean(aligned, axis=0),
                                     first.train_fraction, first.tuple_ids, first.slides, {})
    return Operand(text, classes, folds)


def _align(ref: FoldPredictions, other: FoldPredictions, where: str) -> np.ndarray:
    """``other``'s probabilities in ``ref``'s tuple order (ConfigError when the test tuples differ)."""
    if ref.tuple_ids == other.tuple_ids:
        return other.probs
    index = {t: i for i, t in enumerate(other.tuple_ids)}
    if set(index) != set(ref.tuple_ids) or len(index) != len(ref.tuple_ids):
        raise ConfigError(f"{where}: the runs tested different tuples (other data or folds); compare runs trained on "
                          "the same dataset with the same seed and number of folds")
    return other.probs[[index[t] for t in ref.tuple_ids]]


# ----- metrics, fast enough to bootstrap ------------------------------------------------------------
def _auc(y: np.ndarray, p: np.ndarray, n_classes: int) -> float:
    """Macro one-vs-rest AUC over the classes present (class 1's AUC for two classes), as in the run tables."""
    from scipy.stats import rankdata

    present = np.unique(y)
    if len(present) < 2:
        return math.nan
    classes = [1] if n_classes == 2 else present.tolist()
    aucs = []
    for c in classes:
        pos = y == c
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        ranks = rankdata(p[:, c])
        aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs))


def _f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    present = np.unique(y)
    binary = n_classes == 2 and len(present) == 2
    scores = []
    for c in ([1] if binary else present.tolist()):
        tp = float(np.sum((pred == c) & (y == c)))
        fp = float(np.sum((pred == c) & (y != c)))
        fn = float(np.sum((pred != c) & (y == c)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else math.nan


def metric_value(name: str, y: np.ndarray, p: np.ndarray) -> float:
    """``auc``, ``accuracy`` or ``f1`` (macro) of one prediction set, as :mod:`histomag.dmsl.metrics` computes them."""
    if len(y) == 0:
        return math.nan
    if name == "auc":
        return _auc(y, p, p.shape[1])
    pred = p.argmax(axis=1)
    if name == "accuracy":
        return float(np.mean(pred == y))
    if name == "f1":
        return _f1(y, pred, p.shape[1])
    raise ConfigError(f"unknown metric {name!r}; valid: {', '.join(COMPARE_METRICS)}")


# ----- the paired bootstrap -------------------------------------------------------------------------
@dataclass
class _Pair:
    """One (seed, fold): the level's items of both runs, grouped by the resampling unit (patient)."""

    units: list[np.ndarray]  # item indices per patient
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray


def _items(fold: FoldPredictions, probs_a: np.ndarray, probs_b: np.ndarray, level: str) -> _Pair:
    n = len(fold.y)
    if level == "tuple":
        keys = [str(i) for i in range(n)]
    elif level == "slide":
        slides = fold.slides if len(fold.slides) == n else tuple(fold.patients)
        keys = [f"{s}\x00{y}" for s, y in zip(slides, fold.y.tolist())]
    else:
        keys = [f"{p}\x00{y}" for p, y in zip(fold.patients, fold.y.tolist())]
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    members = list(groups.values())
    y = np.array([fold.y[m[0]] for m in members], dtype=int)
    a = np.stack([probs_a[m].mean(axis=0) for m in members])
    b = np.stack([probs_b[m].mean(axis=0) for m in members])
    unit_of = [fold.patients[m[0]] for m in members]
    units: dict[str, list[int]] = {}
    for j, u in enumerate(unit_of):
        units.setdefault(u, []).append(j)
    return _Pair([np.array(v) for v in units.values()], y, a, b)


@dataclass(frozen=True)
class MetricDifference:
    """One metric's paired difference ``A - B``."""

    metric: str
    mean_a: float
    mean_b: float
    delta: float
    low: float
    high: float
    pairs: int
    a_better: int

    def line(self, a: str, b: str) -> str:
        """``a − b: ΔAUC +0.012 [−0.010, +0.034]``."""
        return (f"{a} − {b}: Δ{self.metric.upper() if self.metric == 'auc' else self.metric} {self.delta:+.3f} "
                f"[{self.low:+.3f}, {self.high:+.3f}]")


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_runs` returns."""

    a: str
    b: str
    level: str
    n_boot: int
    pairs: list[tuple[int, int]]
    units: int
    metrics: list[MetricDifference] = field(default_factory=list)

    def table(self) -> str:
        """A Markdown table, one row per metric."""
        lines = [f"Paired comparison at {self.level} level over {len(self.pairs)} (seed, fold) pairs and "
                 f"{self.units} test patients/groups; 95% bootstrap interval ({self.n_boot:,} draws of patients).",
                 "", f"| metric | A: {self.a} | B: {self.b} | Δ (A − B) | 95% interval | pairs with A better |",
                 "|---|---|---|---|---|---|"]
        for m in self.metrics:
            lines.append(f"| {m.metric} | {m.mean_a:.3f} | {m.mean_b:.3f} | {m.delta:+.3f} | "
                         f"[{m.low:+.3f}, {m.high:+.3f}] | {m.a_better}/{m.pairs} |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "level": self.level, "n_boot": self.n_boot,
                "pairs": [list(p) for p in self.pairs], "units": self.units,
                "metrics": [m.__dict__ for m in self.metrics]}


def compare_runs(a: str | Path, b: str | Path, *, level: str = "slide", metrics: Sequence[str] = COMPARE_METRICS,
                 n_boot: int = DEFAULT_BOOT, seed: int = 0) -> Comparison:
    """Paired differences ``A - B`` per metric with a 95% percentile-bootstrap interval.

    Args:
        a, b: run folders, multi-seed run folders or ``RUN_X+RUN_Y`` late fusions (see the module docstring).
        level: ``tuple``, ``slide`` or ``patient``.
        metrics: any of ``auc``, ``accuracy``, ``f1``.
        n_boot: bootstrap draws (>= 100).
        seed: seed of the bootstrap draws.

    Raises:
        ConfigError: an unknown level or metric, runs with other classes, no common (seed, fold),
            or folds that tested other tuples.
        CheckpointError: a missing run folder or fold predictions.
    """
    if level not in LEVELS:
        raise ConfigError(f"unknown level {level!r}; valid: {', '.join(LEVELS)}")
    for m in metrics:
        if m not in COMPARE_METRICS:
            raise ConfigError(f"unknown metric {m!r}; valid: {', '.join(COMPARE_METRICS)}")
    if n_boot < 100:
        raise ConfigError(f"n_boot={n_boot} is too few for a 95% interval; use n_boot=1000 or more")
    op_a, op_b = load_operand(a), load_operand(b)
    if op_a.classes != op_b.classes:
        raise ConfigError(f"{op_a.name} and {op_b.name} have different classes ({', '.join(op_a.classes)} vs "
                          f"{', '.join(op_b.classes)}); compare runs of the same dataset")
    keys = sorted(set(op_a.folds) & set(op_b.folds))
    if not keys:
        raise ConfigError(f"{op_a.name} and {op_b.name} share no (seed, fold): train both with the same seed(s) and folds")
    pairs = []
    for key in keys:
        fa, fb = op_a.folds[key], op_b.folds[key]
        pb = _align(fa, fb, f"seed {key[0]} fold {key[1]}")
        pairs.append(_items(fa, fa.probs, pb, level))
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(p.units), size=(n_boot, len(p.units))) for p in pairs]
    out = []
    for name in metrics:
        va = np.array([metric_value(name, p.y, p.a) for p in pairs])
        vb = np.array([metric_value(name, p.y, p.b) for p in pairs])
        boot = np.empty(n_boot)
        for r in range(n_boot):
            diffs = []
            for p, d in zip(pairs, draws):
                idx = np.concatenate([p.units[u] for u in d[r]])
                diffs.append(metric_value(name, p.y[idx], p.a[idx]) - metric_value(name, p.y[idx], p.b[idx]))
            boot[r] = np.nanmean(diffs)
        diff = va - vb
        low, high = np.nanpercentile(boot, [2.5, 97.5])
        out.append(MetricDifference(name, float(np.nanmean(va)), float(np.nanmean(vb)), float(np.nanmean(diff)),
                                    float(low), float(high), int(np.sum(~np.isnan(diff))), int(np.sum(diff > 0))))
    units = sum(len(p.units) for p in pairs)
    return Comparison(op_a.name, op_b.name, level, n_boot, keys, units, out)


def operand_metrics(spec: str | Path, *, level: str = "slide", metrics: Sequence[str] = COMPARE_METRICS
                    ) -> dict[str, np.ndarray]:
    """Each metric of one operand per (seed, fold), at ``level``: ``{"auc": array over pairs, ...}``.

    The unpaired view that tables of means need (:func:`compare_runs` for differences).
    """
    if level not in LEVELS:
        raise ConfigError(f"unknown level {level!r}; valid: {', '.join(LEVELS)}")
    op = load_operand(spec)
    pairs = [_items(op.folds[k], op.folds[k].probs, op.folds[k].probs, level) for k in sorted(op.folds)]
    return {m: np.array([metric_value(m, p.y, p.a) for p in pairs]) for m in metrics}
