"""Similarity statistics of a DMSL run (Diao et al., IEEE JBHI 2023, Eq. (4), Fig. 4).

For a tuple, ``S(x, y) = (corr(x, y) + 1) / 2`` where ``corr`` is the Pearson (normalised)
correlation of the pooled feature vectors ``x`` and ``y`` of two magnification branches; with
more than two branches ``S`` is the mean over the pairs. ``S`` is in ``[0, 1]``: 1 for
identical (or positively proportional) vectors, 0 for anti-correlated ones, 0.5 where a vector
is constant (correlation undefined; counted as "no relation").

Scores are binned into ``[0, 0.25]``, ``(0.25, 0.5]``, ``(0.5, 0.75]`` and ``(0.75, 1]`` (the
paper's 0-0.25, 0.26-0.5, 0.51-0.75, 0.76-1) separately for correctly and wrongly classified
tuples. A run's tuples are every fold's test tuples, each scored by its own fold's model.

Feature widths: the branches of a :class:`~histomag.dmsl.network.MultiMagNet` share one backbone
architecture, so their pooled vectors have one width. Where widths differ, ``feature="pooled"``
refuses (ConfigError) and ``feature="channel-max"`` compares what the SIM loss compares instead:
each branch's channel-wise maximum map, pooled to the smallest common spatial size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from histomag.errors import ConfigError
from histomag.dmsl.modes import mode_description

BIN_EDGES: tuple[float, float, float] = (0.25, 0.5, 0.75)
BIN_LABELS: tuple[str, str, str, str] = ("0-0.25", "0.26-0.5", "0.51-0.75", "0.76-1")
GROUPS: tuple[str, str] = ("correct", "wrong")
FEATURES: tuple[str, str] = ("pooled", "channel-max")
TABLE_COLUMNS = ("run", "mode", "correctness", "bin", "count", "share", "share_in_group")


def similarity(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Eq. (4): ``S = (corr(x, y) + 1) / 2`` along the last axis.

    Args:
        x, y: ``(..., D)`` arrays of equal shape (one vector per row).

    Returns:
        ``(...)`` array in ``[0, 1]``; 0.5 where either vector is constant.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ConfigError(f"similarity needs vectors of one shape, got {x.shape} and {y.shape}")
    xc, yc = x - x.mean(axis=-1, keepdims=True), y - y.mean(axis=-1, keepdims=True)
    denom = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(denom > 0, (xc * yc).sum(axis=-1) / np.where(denom > 0, denom, 1.0), 0.0)
    return np.clip(0.5 * (corr + 1.0), 0.0, 1.0)


def similarity_bins(scores: np.ndarray) -> np.ndarray:
    """Bin index (0..3) of each score; upper edges are inclusive (0.25 -> 0, 0.26 -> 1, 0.75 -> 2).

    Scores are rounded to 9 decimals first, so floating-point noise does not push an exact
    0.25 into the next bin.
    """
    s = np.round(np.asarray(scores, dtype=np.float64), 9)
    if s.size and (np.nanmin(s) < 0 or np.nanmax(s) > 1 or np.isnan(s).any()):
        raise ConfigError("similarity scores must be in [0, 1]")
    return np.digitize(s, BIN_EDGES, right=True)


def bin_counts(scores: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """Counts per bin for correctly and wrongly classified tuples.

    Returns:
        ``{"n": N, "correct": [4 counts], "wrong": [4 counts], "bins": BIN_LABELS}``.
    """
    scores, correct = np.asarray(scores), np.asarray(correct, dtype=bool)
    if scores.shape != correct.shape:
        raise ConfigError(f"{scores.shape[0]} scores but {correct.shape[0]} correctness flags")
    bins = similarity_bins(scores)
    out: dict[str, Any] = {"n": int(scores.size), "bins": list(BIN_LABELS)}
    for group, mask in (("correct", correct), ("wrong", ~correct)):
        out[group] = np.bincount(bins[mask], minlength=len(BIN_LABELS)).astype(int).tolist()
    return out


def pair_similarity(features: Sequence[Any], feature: str = "pooled") -> np.ndarray:
    """Per-tuple ``S`` of a batch, averaged over branch pairs.

    Args:
        features: per-branch ``(B, C)`` pooled vectors (``"pooled"``) or ``(B, C, h, w)`` maps
            (``"channel-max"``), as torch tensors or arrays.
        feature: ``"pooled"`` or ``"channel-max"``.
    """
    import torch

    if feature not in FEATURES:
        raise ConfigError(f"unknown feature {feature!r}; valid: {', '.join(FEATURES)}")
    if len(features) < 2:
        raise ConfigError("similarity needs a model with two or more magnification branches")
    if feature == "channel-max":
        from histomag.dmsl.similarity import channel_max_maps

        features = channel_max_maps([torch.as_tensor(f) for f in features])
    vecs = [torch.as_tensor(f).detach().flatten(1).double().cpu().numpy() for f in features]
    widths = sorted({v.shape[1] for v in vecs})
    if len(widths) > 1:
        raise ConfigError(f"branch feature widths differ ({', '.join(map(str, widths))}); use feature "
                          "'channel-max' to compare channel-max maps pooled to one shape")
    return np.mean([similarity(vecs[i], vecs[j]) for i, j in combinations(range(len(vecs)), 2)], axis=0)


def similarity_scores(model: Any, dataset: Any, *, feature: str = "pooled", batch_size: int = 32,
                      num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``S`` and correctness of every tuple of a labelled dataset.

    Args:
        model: a ``DMSLTask`` or :class:`~histomag.dmsl.network.MultiMagNet` with >= 2 branches.
        dataset: tuples with the evaluation transform (``(members, label, index)`` items).
        feature: ``"pooled"`` (Eq. 4 on pooled vectors) or ``"channel-max"``.
        batch_size, num_workers: DataLoader settings.

    Returns:
        ``(scores, correct)``: float array in [0, 1] and bool array (fused prediction == label),
        in dataset order.
    """
    import torch

    from histomag.fitloop import make_loader

    net = getattr(model, "model", model).eval()
    if net.n_inputs < 2:
        raise ConfigError(f"similarity needs two or more magnifications; this {net.mode} model has one")
    n = len(dataset)
    scores, correct = np.zeros(n), np.zeros(n, dtype=bool)
    device = next(net.parameters()).device
    with torch.no_grad():
        for xs, y, idx in make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers):
            out = net([x.to(device) for x in xs])
            feats = out["pooled"] if feature == "pooled" else out["feature_maps"]
            scores[idx.numpy()] = pair_similarity(feats, feature)
            correct[idx.numpy()] = (out["probs"].argmax(dim=1).cpu() == y).numpy()
    return scores, correct


def run_similarity(run_dir: str | Path, data_dir: str | Path | None = None, *, fold: int | None = None,
                   feature: str = "pooled") -> dict[str, Any]:
    """Score every test tuple of a run (each fold's with its own model).

    Returns:
        ``{"mode", "scores", "correct", "tuple_ids", "labels", "folds"}`` (arrays/lists in
        fold order).
    """
    from histomag.dmsl.explain import fold_numbers, fold_test_data
    from histomag.dmsl.cv import read_run

    if feature not in FEATURES:
        raise ConfigError(f"unknown feature {feature!r}; valid: {', '.join(FEATURES)}")
    run = read_run(run_dir)
    parts: dict[str, list] = {"scores": [], "correct": [], "tuple_ids": [], "labels": [], "folds": []}
    for k in fold_numbers(run, fold):
        data = fold_test_data(run_dir, data_dir, k)
        s, c = similarity_scores(data.task, data.dataset, feature=feature, batch_size=run.config.batch_size)
        parts["scores"].append(s)
        parts["correct"].append(c)
        parts["tuple_ids"] += [r["tuple_id"] for r in data.dataset.rows]
        parts["labels"] += [r["label"] for r in data.dataset.rows]
        parts["folds"] += [k] * len(s)
    return {"mode": run.config.mode, "scores": np.concatenate(parts["scores"]),
            "correct": np.concatenate(parts["correct"]), "tuple_ids": parts["tuple_ids"],
            "labels": parts["labels"], "folds": parts["folds"]}


def table_rows(run: str, mode: str, counts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """CSV rows of one run: per group a ``bin="all"`` row, then one row per bin.

    ``share`` is of all the run's tuples (the nested pie's rings); ``share_in_group`` is of the
    tuples in the same correctness group.
    """
    n = max(int(counts["n"]), 1)
    rows = []
    for group in GROUPS:
        group_n = sum(counts[group])
        rows.append({"run": run, "mode": mode, "correctness": group, "bin": "all", "count": group_n,
                     "share": round(group_n / n, 6), "share_in_group": 1.0 if group_n else 0.0})
        for label, count in zip(BIN_LABELS, counts[group]):
            rows.append({"run": run, "mode": mode, "correctness": group, "bin": label, "count": int(count),
                         "share": round(count / n, 6), "share_in_group": round(count / group_n, 6) if group_n else 0.0})
    return rows


def similarity_table(runs: Mapping[str, str | Path], data_dir: str | Path | None = None, *,
                     fold: int | None = None, feature: str = "pooled") -> list[dict[str, Any]]:
    """The table of :func:`table_rows` for several runs (e.g. ``{"DMSL": sim_run, "MM": mm_run}``)."""
    rows: list[dict[str, Any]] = []
    for name, run_dir in runs.items():
        res = run_similarity(run_dir, data_dir, fold=fold, feature=feature)
        rows += table_rows(name, res["mode"], bin_counts(res["scores"], res["correct"]))
    return rows


def _counts_from_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = runs.setdefault(str(r["run"]), {"mode": str(r["mode"]), "correct": [0] * 4, "wrong": [0] * 4})
        if r["bin"] in BIN_LABELS:
            entry[str(r["correctness"])][BIN_LABELS.index(r["bin"])] = int(r["count"])
    return runs


def pie_chart(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str | None = None) -> Path:
    """Nested pies as in Fig. 4: inner ring correct vs wrong, outer ring the bins within each.

    Args:
        rows: :func:`similarity_table` rows (or the CSV read back); one pie per run.
        path: PNG to write.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    runs = _counts_from_rows(rows)
    if not runs:
        raise ConfigError("no similarity rows to draw")
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 5.0), squeeze=False)
    greens, reds = plt.get_cmap("Greens")(np.linspace(0.3, 0.9, 4)), plt.get_cmap("Reds")(np.linspace(0.3, 0.9, 4))
    for ax, (name, c) in zip(axes[0], runs.items()):
        n = sum(c["correct"]) + sum(c["wrong"])
        ax.set_title(f"{name} ({mode_description(c['mode'])})\n{n} tuples, "
                     f"{100 * sum(c['correct']) / max(n, 1):.1f}% correct")
        if n == 0:
            ax.axis("off")
            continue
        outer = np.array(c["correct"] + c["wrong"], dtype=float)
        inner = np.array([sum(c["correct"]), sum(c["wrong"])], dtype=float)
        pct = lambda v: f"{v:.0f}%" if v >= 4 else ""  # noqa: E731
        ax.pie(outer, radius=1.0, colors=list(greens) + list(reds), autopct=pct, pctdistance=0.84,
               wedgeprops={"width": 0.3, "edgecolor": "w"}, textprops={"fontsize": 8})
        ax.pie(inner, radius=0.7, colors=["#2e7d32", "#c62828"], autopct=pct, pctdistance=0.6,
               wedgeprops={"width": 0.35, "edgecolor": "w"}, textprops={"color": "w", "fontsize": 9})
        ax.set(aspect="equal")
    handles = [Patch(color=col, label=f"{g} S {b}") for g, cols in (("correct", greens), ("wrong", reds))
               for col, b in zip(cols, BIN_LABELS)]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title or "similarity S of the magnification branches' features (inner: correct / wrong)")
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_similarity(runs: Mapping[str, str | Path], data_dir: str | Path | None, out_dir: str | Path, *,
                     fold: int | None = None, feature: str = "pooled") -> dict[str, Path]:
    """Score the runs and write ``OUT/similarity.csv``, ``OUT/scores.csv`` and ``OUT/similarity_pies.png``.

    ``scores.csv`` holds one row per tuple (run, fold, tuple_id, label, correct, similarity).
    """
    from histomag.data.atomic import atomic_write_csv

    out_dir = Path(out_dir)
    rows: list[dict[str, Any]] = []
    per_tuple: list[list[Any]] = []
    for name, run_dir in runs.items():
        res = run_similarity(run_dir, data_dir, fold=fold, feature=feature)
        rows += table_rows(name, res["mode"], bin_counts(res["scores"], res["correct"]))
        per_tuple += [[name, k, t, lab, int(ok), f"{s:.6f}"] for k, t, lab, ok, s in
                      zip(res["folds"], res["tuple_ids"], res["labels"], res["correct"], res["scores"])]
    paths = {"table": out_dir / "similarity.csv", "scores": out_dir / "scores.csv",
             "png": out_dir / "similarity_pies.png"}
    atomic_write_csv(paths["table"], TABLE_COLUMNS, rows)
    atomic_write_csv(paths["scores"], ["run", "fold", "tuple_id", "label", "correct", "similarity"], per_tuple)
    pie_chart(rows, paths["png"])
    return paths
