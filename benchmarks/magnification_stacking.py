"""Can the CNN and the nuclei-size ruler be combined better than by a plain geometric mean?

Reads the held-out predictions of one or more ``histomag magnification cv`` runs
(``RUN/predictions.csv``: one row per held-out view, with the CNN's, the test-time-scaled CNN's and
the ruler's predicted magnification) and evaluates, **nested by fold** so that no held-out label
steers its own correction:

* ``cnn_tta``, ``ruler``, ``geomean``: the inferences ``magnification cv`` already reports;
* ``cnn_recal``: the CNN's log-prediction mapped by ``a + b·log(cnn)``, fitted by least squares on
  the *other* folds' held-out predictions (a cure for the compressed slope, if it generalises);
* ``stack``: ``a + b·log(cnn) + c·log(ruler)`` fitted the same way;
* ``weighted``: ``w·log(cnn) + (1−w)·log(ruler)``, with ``w`` on a 0.05 grid chosen on the other
  folds by the median over their groups of the median relative error (groups count equally).

Where the ruler found too few nuclei, every method falls back to the CNN, as the estimator does.
Prints the median relative error of mpp per held-out group and pooled. Run from the repository root::

    PYTHONPATH=src python benchmarks/magnification_stacking.py magcv [magcv14 ...]
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from histomag.magnification.cv import magnification_metrics

METHODS = ("cnn_tta", "ruler", "geomean", "cnn_recal", "stack", "weighted")


def load(run: Path) -> dict[str, np.ndarray]:
    """The held-out rows of one CV run that have a prediction (log magnifications; ruler NaN when it failed)."""
    path = run / "predictions.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: no such file; give the --out folder of a finished `histomag magnification cv`")
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if not r.get("error")]
    if not rows:
        raise SystemExit(f"{path}: no held-out predictions in it")

    def col(name: str) -> np.ndarray:
        return np.array([math.log(float(r[name])) if r[name] else math.nan for r in rows])

    return {"fold": np.array([int(r["fold"]) for r in rows]), "group": np.array([r["group"] for r in rows]),
            "true": col("true_magnification"), "cnn": col("predicted_tta"), "ruler": col("predicted_nuclei")}


def median_rel_error(true_log: np.ndarray, pred_log: np.ndarray) -> float:
    """Median |mpp_pred / mpp_true − 1|, by the definition ``histomag magnification cv`` reports."""
    return magnification_metrics(np.exp(true_log), np.exp(pred_log))["median_rel_error"]


def _group_median(true_log: np.ndarray, pred_log: np.ndarray, groups: np.ndarray) -> float:
    """Median over groups of each group's median relative error (groups count equally)."""
    return float(np.median([median_rel_error(true_log[groups == g], pred_log[groups == g]) for g in np.unique(groups)]))


def _lstsq(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(X, y, rcond=None)[0]


def nested_predictions(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each method's log-prediction for every row; the fitted ones are fitted on the other folds only.

    Where the ruler failed (NaN), every method that uses it gives the CNN's prediction instead.
    """
    cnn, ruler, true = d["cnn"], d["ruler"], d["true"]
    has_ruler = np.isfinite(ruler)
    out = {"cnn_tta": cnn.copy(), "ruler": np.where(has_ruler, ruler, cnn),
           "geomean": np.where(has_ruler, (cnn + ruler) / 2, cnn)}
    out.update({m: np.full(true.shape, np.nan) for m in ("cnn_recal", "stack", "weighted")})
    grid = np.linspace(0, 1, 21)
    for fold in np.unique(d["fold"]):
        te = d["fold"] == fold
        tr = ~te & has_ruler
        a, b = _lstsq(np.c_[np.ones(int((~te).sum())), cnn[~te]], true[~te])
        out["cnn_recal"][te] = a + b * cnn[te]
        a, b, c = _lstsq(np.c_[np.ones(int(tr.sum())), cnn[tr], ruler[tr]], true[tr])
        out["stack"][te] = np.where(has_ruler[te], a + b * cnn[te] + c * ruler[te], cnn[te])
        scores = [_group_median(true[tr], w * cnn[tr] + (1 - w) * ruler[tr], d["group"][tr]) for w in grid]
        w = grid[int(np.argmin(scores))]
        out["weighted"][te] = np.where(has_ruler[te], w * cnn[te] + (1 - w) * ruler[te], cnn[te])
    return out


def table(d: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Median relative error of mpp per method, per held-out group and pooled (``all``)."""
    res: dict[str, dict[str, float]] = defaultdict(dict)
    for m, p in nested_predictions(d).items():
        for g in np.unique(d["group"]):
            res[m][str(g)] = median_rel_error(d["true"][d["group"] == g], p[d["group"] == g])
        res[m]["all"] = median_rel_error(d["true"], p)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="--out folders of `histomag magnification cv` runs")
    args = ap.parse_args(argv)
    for run in args.runs:
        res = table(load(run))
        groups = list(res["ruler"])
        print(f"\n{run}: median relative error of mpp, nested by fold")
        print(f"{'group':24s}" + "".join(f"{m:>11s}" for m in METHODS))
        for g in groups:
            print(f"{g:24s}" + "".join(f"{res[m][g]:11.3f}" for m in METHODS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
