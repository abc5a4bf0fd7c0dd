"""The bridge on real tissue: DMSL image-level accuracy on BACH with the true, the estimated and a wrong resolution.

For every fold of a cross-validated DMSL run tiled from BACH's index CSV, the fold's model predicts
the images of its *test* groups (never seen in training) three times, reading each image at

* ``true``: the index's resolution (0.56 µm wide x 0.42 µm tall, squared to 0.56 µm/px);
* ``estimated``: what the magnification model recovers from the pixels (``histomag.magnification.infer``,
  the shipped default unless ``--checkpoint``), from the file as a user has it (no anisotropy
  known); an estimate is refused as ``histomag dmsl predict --mpp estimate`` refuses it (its interval
  holds two standard objectives a factor 2 apart, or is wider than ``--max-uncertainty``, a factor)
  and then counts as not predicted;
* ``estimated-pooled``: one estimate pooled over the fold's test images, as ``--same-acquisition``
  gives it (refused for all of them when it cannot tell two objectives apart);
* ``estimated-anyway``: the per-image estimates, every one used however uncertain;
* ``assumed-40x``: 0.25 µm/px for every image (a user who takes snapshots for 40x scans).

Prints image-level accuracy and macro F1 per setting (over all test images; refused or failed
images count as wrong) and the estimates' relative error against 0.56 µm/px. Writes per-image
rows to ``OUT/bridge.csv``. Run from the repository root (research-licensed data stays where it is)::

    PYTHONPATH=src python benchmarks/dmsl_bach_bridge.py RUN ../shared/data/bach/index.csv --out OUT
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np


SETTINGS = ("true", "estimated", "estimated-pooled", "estimated-anyway", "assumed-40x")


def test_images(run_dir: Path, index: Path, fold: int, group_block: int) -> list:
    """The index rows (as tile jobs) of the groups fold ``fold`` tested."""
    from histomag.data.index import block_groups, read_index
    from histomag.tiling.jobs import SlideJob

    split = json.loads((run_dir / "folds" / str(fold) / "split.json").read_text())
    rows, _ = block_groups(read_index(index, require_label=True), group_block)
    tested = set(split["test_patients"])
    return [SlideJob(r.path, mpp=r.mpp, label=r.label, patient_id=r.group) for r in rows if r.group in tested]


def uncertainty(e: dict) -> float | None:
    """The interval as a factor either side of the estimate (``MagnificationEstimate.uncertainty_factor``)."""
    return e.get("uncertainty_factor")


def refused(e: dict, max_uncertainty: float | None) -> str | None:
    """Why ``dmsl predict --mpp estimate`` would refuse this estimate record, or None: the library's
    own rule (:func:`histomag.magnification.infer.refusal`) on the estimate the record states."""
    from histomag.magnification.estimate import MagnificationEstimate
    from histomag.magnification.infer import refusal

    if e.get("mpp") is None:
        return e.get("error") or "no estimate"
    interval = tuple(e["magnification_interval"]) if e.get("magnification_interval") else None
    est = MagnificationEstimate(e["magnification"], e.get("n_crops", 0), 0.0, interval=interval,
                                level=e.get("interval_level", 0.9))
    return refusal("image", est, max_uncertainty)


def macro_f1(truth: list[str], pred: list[str], classes: list[str]) -> float:
    f1s = []
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(truth, pred))
        fp = sum(t != c and p == c for t, p in zip(truth, pred))
        fn = sum(t == c and p != c for t, p in zip(truth, pred))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("index", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--max-uncertainty", type=float, default=None, help="A factor (as dmsl predict takes it).")
    parser.add_argument("--group-block", type=int, default=10)
    args = parser.parse_args()

    from histomag.dmsl.cv import read_run
    from histomag.dmsl.predict import predict_images
    from histomag.magnification.infer import load_estimator

    run = read_run(args.run)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "estimates.json"
    estimates: dict[str, dict] = json.loads(cache.read_text()) if cache.is_file() else {}
    estimator = None
    rows: list[dict] = []
    for k in range(1, run.config.folds + 1):
        jobs = test_images(args.run, args.index, k, args.group_block)
        for job in jobs:
            if job.path not in estimates:
                estimator = estimator or load_estimator(args.checkpoint)
                estimates[job.path] = estimator.estimate_file(job.path)
        cache.write_text(json.dumps(estimates))
        for setting in SETTINGS:
            failed: dict[str, str] = {}
            if setting == "true":
                use = jobs
            elif setting == "assumed-40x":
                use = [replace(j, mpp=0.25) for j in jobs]
            elif setting == "estimated-pooled":
                key = f"pooled fold {k}"
                if key not in estimates:  # one estimate for the fold's test images as one acquisition
                    estimator = estimator or load_estimator(args.checkpoint)
                    pooled, _ = estimator.estimate_group([j.path for j in jobs])
                    estimates[key] = pooled.to_dict() if pooled is not None else {"mpp": None}
                    cache.write_text(json.dumps(estimates))
                why = refused(estimates[key], args.max_uncertainty)
                use = [replace(j, mpp=estimates[key].get("mpp")) for j in jobs]
                failed = {j.path: f"pooled estimate refused ({why})" for j in jobs} if why else {}
            elif setting == "estimated-anyway":
                use = [replace(j, mpp=estimates[j.path].get("mpp")) for j in jobs]
            else:
                use = []
                for j in jobs:
                    e = estimates[j.path]
                    why = refused(e, args.max_uncertainty)
                    if why:
                        failed[j.path] = f"estimate refused ({why})"
                    use.append(replace(j, mpp=e.get("mpp")))
            res = predict_images(args.run, use, args.out / f"fold{k}" / setting, fold=k, failed=failed)
            for r in res.images:
                pred = run.class_names[int(np.argmax(r.probs))] if r.probs is not None else ""
                e = estimates[r.image]
                rows.append({"fold": k, "setting": setting, "image": Path(r.image).name, "label": r.label,
                             "predicted": pred, "mpp_used": r.mpp or "", "n_tuples": r.n_tuples,
                             "estimated_mpp": e.get("mpp") or "", "uncertainty": uncertainty(e) or "",
                             "error": r.error})
        print(f"fold {k}: {len(jobs)} test images", flush=True)
    with open(args.out / "bridge.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("| reading at | images | predicted | image accuracy | macro F1 |")
    print("|---|---|---|---|---|")
    for setting in SETTINGS:
        sel = [r for r in rows if r["setting"] == setting]
        truth, pred = [r["label"] for r in sel], [r["predicted"] for r in sel]
        acc = np.mean([t == p for t, p in zip(truth, pred)])
        print(f"| {setting} | {len(sel)} | {sum(bool(p) for p in pred)} | {acc:.3f} | "
              f"{macro_f1(truth, pred, run.class_names):.3f} |")
    for label in run.class_names:
        e = [float(r["estimated_mpp"]) for r in rows if r["setting"] == "true" and r["estimated_mpp"]
             and r["label"] == label]
        if e:
            print(f"estimates of {label} images: median {np.median(e):.3f} µm/px ({len(e)} images)")
    est = [float(r["estimated_mpp"]) for r in rows if r["setting"] == "true" and r["estimated_mpp"]]
    rel = np.abs(np.array(est) / 0.56 - 1)
    bias = np.median(np.log(np.array(est) / 0.56))
    print(f"estimates: {len(est)} images, median {np.median(est):.3f} µm/px (true 0.56 across, 0.42 down), median "
          f"relative error {np.median(rel):.3f}, within 10% {np.mean(rel <= 0.1):.2f}, bias {math.expm1(bias):+.1%}")


if __name__ == "__main__":
    main()
