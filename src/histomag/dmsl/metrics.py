"""Classification metrics at tuple (patch) and patient level, their fold summaries and tables.

Conventions (Diao et al., IEEE JBHI 2023, Table III):

* Two classes: precision, recall and F1 of the positive class, which is the second class
  name in sorted order (index 1). More classes: macro averages.
* AUC: binary ROC AUC of the positive class; one-vs-rest macro AUC for more classes.
* A set without some class (a fold whose test patients lack it) gets a warning and metrics
  over the classes present (macro over them; AUC over the classes that have both positives
  and negatives). Fewer than two classes present: AUC is NaN.
* Patient level: the tuples of a patient are averaged (mean class probability) per
  ``(patient, label)``: for patients whose tuples share one label that is one group per
  patient; region-annotated slides with several classes give one group per class present.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from histomag.dmsl.modes import mode_method

METRICS: tuple[str, ...] = ("precision", "recall", "accuracy", "f1", "auc")
TABLE_KEYS: tuple[tuple[str, str], ...] = (("PRE", "precision"), ("REC", "recall"), ("ACC", "accuracy"),
                                           ("F1", "f1"), ("AUC", "auc"))
TABLE_COLUMNS = ["method", "combination", "mode", "level", "PRE", "REC", "ACC", "F1", "AUC"]


class MissingClassWarning(UserWarning):
    """A prediction set lacks some class, so its metrics cover only the classes present."""


def classification_metrics(y_true: Sequence[int] | np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                           *, where: str = "") -> dict[str, Any]:
    """Precision, recall, accuracy, F1, AUC and the confusion matrix of one prediction set.

    Args:
        y_true: class index per sample.
        probs: ``(n, n_classes)`` class probabilities (rows sum to 1).
        class_names: names in index order (sorted; index 1 is the positive class for two).
        where: what the set is (e.g. "fold 2, patch level"), for warnings.

    Returns:
        ``{"precision", "recall", "accuracy", "f1", "auc", "n", "average", "classes_present",
        "confusion_matrix"}``; the confusion matrix is ``n_classes x n_classes`` (rows: truth).
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=float)
    n_classes = len(class_names)
    if p.ndim != 2 or p.shape != (len(y), n_classes):
        raise ValueError(f"probs must be (n={len(y)}, {n_classes}), got {p.shape}")
    pred = p.argmax(axis=1) if len(y) else np.zeros(0, dtype=int)
    present = sorted(set(y.tolist()))
    label = f" in {where}" if where else ""
    if len(present) < n_classes:
        missing = [class_names[i] for i in range(n_classes) if i not in present]
        warnings.warn(f"no {', '.join(missing)} tuples{label}: metrics cover only "
                      f"{', '.join(class_names[i] for i in present) or 'nothing'}", MissingClassWarning,
                      stacklevel=2)
    out: dict[str, Any] = {"n": int(len(y)), "classes_present": [class_names[i] for i in present]}
    if not len(y):
        out.update({k: math.nan for k in METRICS}, average="none",
                   confusion_matrix=np.zeros((n_classes, n_classes), int).tolist())
        return out
    binary = n_classes == 2 and len(present) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's zero-division notes: we report 0 as sklearn does
        if binary:
            pre, rec, f1, _ = precision_recall_fscore_support(y, pred, average="binary", pos_label=1,
                                                              zero_division=0)
        else:
            pre, rec, f1, _ = precision_recall_fscore_support(y, pred, labels=present, average="macro",
                                                              zero_division=0)
    out.update(precision=float(pre), recall=float(rec), f1=float(f1), accuracy=float(np.mean(pred == y)),
               average="binary" if binary else "macro")
    if len(present) < 2:
        out["auc"] = math.nan
    elif n_classes == 2:
        out["auc"] = float(roc_auc_score(y == 1, p[:, 1]))
    else:
        out["auc"] = float(np.mean([roc_auc_score(y == c, p[:, c]) for c in present]))
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=list(range(n_classes))).tolist()
    return out


def patient_level(patients: Sequence[str], y_true: Sequence[int], probs: np.ndarray
                  ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Mean class probability per ``(patient, label)`` group.

    Returns:
        ``(group names, labels, mean probabilities)``; a group is named ``patient`` when the
        patient has one label, else ``patient:label_index``; groups in first-seen order.
    """
    p = np.asarray(probs, dtype=float)
    y = np.asarray(y_true, dtype=int)
    labels_of: dict[str, set[int]] = {}
    for pat, lab in zip(patients, y.tolist()):
        labels_of.setdefault(str(pat), set()).add(lab)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (pat, lab) in enumerate(zip(patients, y.tolist())):
        groups.setdefault((str(pat), lab), []).append(i)
    names = [pat if len(labels_of[pat]) == 1 else f"{pat}:{lab}" for pat, lab in groups]
    g_y = np.array([lab for _, lab in groups], dtype=int)
    g_p = np.stack([p[idx].mean(axis=0) for idx in groups.values()]) if groups else np.zeros((0, p.shape[1]))
    return names, g_y, g_p


def evaluate_predictions(patients: Sequence[str], y_true: Sequence[int], probs: np.ndarray,
                         class_names: Sequence[str], *, where: str = "") -> dict[str, dict[str, Any]]:
    """Patch- and patient-level metrics of one prediction set: ``{"patch": ..., "patient": ...}``."""
    prefix = f"{where}, " if where else ""
    names, g_y, g_p = patient_level(patients, y_true, probs)
    patch = classification_metrics(y_true, probs, class_names, where=f"{prefix}patch level")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingClassWarning)  # same classes as the patch level: warned once
        patient = classification_metrics(g_y, g_p, class_names, where=f"{prefix}patient level")
    patient["groups"] = len(names)
    return {"patch": patch, "patient": patient}


def summarise(per_fold: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and sample standard deviation (ddof = 1; 0 for one fold) of every metric over folds.

    NaNs (e.g. AUC of a fold with one class) are left out; a metric that is NaN in every fold
    stays NaN.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for level in ("patch", "patient"):
        out[level] = {}
        for key in METRICS:
            vals = np.array([f[level][key] for f in per_fold if level in f], dtype=float)
            vals = vals[~np.isnan(vals)]
            mean = float(vals.mean()) if len(vals) else math.nan
            std = float(vals.std(ddof=1)) if len(vals) > 1 else (0.0 if len(vals) else math.nan)
            out[level][key] = {"mean": mean, "std": std, "folds": int(len(vals))}
    return out


def _fmt(stat: dict[str, float]) -> str:
    if math.isnan(stat["mean"]):
        return "n/a"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def table_rows(summary: dict[str, dict[str, dict[str, float]]], *, mode: str, magnifications: Sequence[float],
               backbone: str) -> list[dict[str, str]]:
    """Rows laid out like the paper's Table III, one per level (patch, patient)."""
    combination = "+".join(f"{m:g}x" for m in magnifications)
    method = f"{mode_method(mode)} ({backbone})"
    rows = []
    for level in ("patch", "patient"):
        row = {"method": method, "combination": combination, "mode": mode, "level": level}
        row.update({col: _fmt(summary[level][key]) for col, key in TABLE_KEYS})
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, str]]) -> str:
    """A GitHub-flavoured Markdown table of :func:`table_rows`."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(str(r[c]) for c in TABLE_COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def metrics_csv_rows(per_fold: Sequence[dict[str, dict[str, Any]]],
                     summary: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """Long-format rows (fold or mean/std, level, metrics) for ``metrics.csv``."""
    rows: list[dict[str, Any]] = []
    for k, fold in enumerate(per_fold, start=1):
        for level in ("patch", "patient"):
            rows.append({"fold": k, "level": level, "n": fold[level]["n"],
                         **{m: fold[level][m] for m in METRICS}})
    for stat in ("mean", "std"):
        for level in ("patch", "patient"):
            rows.append({"fold": stat, "level": level, "n": "", **{m: summary[level][m][stat] for m in METRICS}})
    return rows
