"""The BACH comparison table (docs/dmsl-bach.md) from DMSL run folders: tuple- and image-level, with paired fold differences.

For every run folder given: tuple-level ACC, macro F1 and macro AUC (mean ± std over folds, from
``metrics.json``) and image-level ACC, macro F1 and AUC (the mean of an image's tuple probabilities,
from each fold's ``predictions.csv``). Then, for each run against the ``--reference`` run (same
folds: same dataset, seed and fold count), the per-fold difference of image-level AUC and accuracy:
mean ± std and in how many folds it is higher. Run from the repository root::

    PYTHONPATH=src python benchmarks/dmsl_bach_table.py build/bach/{single-10,single-5,mm,sim-dist,sim-paper,mscn} \\
        --reference single-10
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def image_level(fold_dir: Path, classes: list[str]) -> dict[str, float]:
    """Accuracy, macro F1 and macro AUC of one fold's test images (mean of their tuples' probabilities)."""
    from histomag.dmsl.metrics import classification_metrics

    with open(fold_dir / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["slide_id"], []).append(r)
    y = np.array([classes.index(rs[0]["label"]) for rs in by_image.values()])
    probs = np.array([np.mean([[float(r[f"prob_{c}"]) for c in classes] for r in rs], axis=0)
                      for rs in by_image.values()])
    m = classification_metrics(y, probs, classes)
    return {"accuracy": m["accuracy"], "f1": m["f1"], "auc": m["auc"], "n": len(y)}


def fmt(values: list[float]) -> str:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}" if len(v) else "–"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--reference", default=None, help="run folder name the others are compared with, fold by fold")
    args = ap.parse_args()

    per_run: dict[str, dict] = {}
    for run in args.runs:
        meta = json.loads((run / "config.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        classes = list(meta["classes"])
        folds = sorted((run / "folds").iterdir(), key=lambda p: int(p.name))
        images = [image_level(f, classes) for f in folds]
        c = meta["config"]
        key = run.name if sum(r.name == run.name for r in args.runs) == 1 else str(run)
        per_run[key] = {"mode": c["mode"], "mags": "+".join(f"{m:g}x" for m in c["magnifications"]),
                             "form": c.get("sim_form", "") if c["mode"] == "sim" else "",
                             "fraction": c.get("train_fraction", 1.0),
                             "tuple": metrics["folds"], "image": images}
    print("| run | mode | magnifications | train share | tuple ACC | tuple F1 | tuple AUC | image ACC | image F1 | "
          "image AUC |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in per_run.items():
        t = [f["patch"] for f in r["tuple"]]
        mode = r["mode"] + (f" ({r['form']})" if r["form"] else "")
        print(f"| {name} | {mode} | {r['mags']} | {r['fraction']:g} | {fmt([x['accuracy'] for x in t])} | "
              f"{fmt([x['f1'] for x in t])} | {fmt([x['auc'] for x in t])} | "
              f"{fmt([x['accuracy'] for x in r['image']])} | {fmt([x['f1'] for x in r['image']])} | "
              f"{fmt([x['auc'] for x in r['image']])} |")
    if args.reference and args.reference in per_run:
        ref = per_run[args.reference]["image"]
        print(f"\nPer-fold differences against {args.reference} (image level; same folds):\n")
        print("| run | Δ AUC (mean ± std) | folds with higher AUC | Δ ACC (mean ± std) | folds with higher ACC |")
        print("|---|---|---|---|---|")
        for name, r in per_run.items():
            if name == args.reference or len(r["image"]) != len(ref):
                continue
            d_auc = [a["auc"] - b["auc"] for a, b in zip(r["image"], ref)]
            d_acc = [a["accuracy"] - b["accuracy"] for a, b in zip(r["image"], ref)]
            print(f"| {name} | {fmt(d_auc)} | {sum(d > 0 for d in d_auc)}/{len(d_auc)} | {fmt(d_acc)} | "
                  f"{sum(d > 0 for d in d_acc)}/{len(d_acc)} |")


if __name__ == "__main__":
    main()
