"""Frozen-encoder training with and without the feature cache, in one run: epoch times, their ratio, same results.

Builds a folder of rendered same-fov tuples (``train_throughput.render_folder``) and a weights file
for a ViT (a random init saved to disk, standing in for a foundation model's published file), then
trains the same DMSL model twice with :func:`histomag.dmsl.fit.fit_fold` and
``freeze_backbone=True, augment=False``:

1. ``plain``: every epoch decodes the tuples and runs the frozen encoders;
2. ``cached``: ``cache_features=True`` — the encoders run once (the fill, timed on its own), later
   epochs read the memory-mapped maps (:class:`~histomag.dmsl.features.FeatureStore`).

An epoch is timed from one ``on_train_epoch_start`` to the next (training, validation and the two
checkpoints each epoch writes). It prints each run's epoch times, the ratio of the median epoch
after the first, and the largest difference in validation-set probabilities of the two best
checkpoints (and their validation accuracy); the claim is ratio >= 20 and a difference <= 1e-4.

Usage::

    python benchmarks/feature_cache.py                           # vit_small at 224/112 px, 64 tuples, 3 epochs
    python benchmarks/feature_cache.py --backbone timm:vit_base_patch16_224 --tuples 96
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import render_folder  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, help="folder for the data, weights and runs (default: a temp dir)")
    p.add_argument("--backbone", default="timm:vit_small_patch16_224")
    p.add_argument("--size", type=int, default=224, help="px at 40x (20x gets half)")
    p.add_argument("--tuples", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mode", default="sim", choices=("sim", "mm"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args()


class EpochTimer:
    """Lightning callback: wall time from each train-epoch start to the next (the last to the fit's end)."""

    def __new__(cls) -> Any:
        import lightning.pytorch as L

        class _Timer(L.Callback):
            def __init__(self) -> None:
                self.starts: list[float] = []
                self.end = 0.0

            def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
                self.starts.append(time.perf_counter())

            def on_fit_end(self, trainer: Any, module: Any) -> None:
                self.end = time.perf_counter()

            @property
            def epochs(self) -> list[float]:
                marks = [*self.starts, self.end]
                return [b - a for a, b in zip(marks, marks[1:])]

        return _Timer()


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from histomag.backbones import create_backbone
    from histomag.data.tuples import TupleDataset, tuple_transform
    from histomag.dmsl.config import DMSLConfig
    from histomag.dmsl.features import FeatureStore
    from histomag.dmsl.fit import fit_fold, load_task, predict_probs

    work = args.work or Path(tempfile.mkdtemp(prefix="histomag-feature-cache-"))
    data = work / "data"
    if not (data / "manifest.csv").is_file():
        render_folder(data, (40.0, 20.0), args.size, args.tuples)
    torch.manual_seed(0)
    encoder = create_backbone(args.backbone)
    weights = work / "encoder.pt"
    torch.save(encoder.state_dict(), weights)
    n_params = sum(p.numel() for p in encoder.parameters())
    mean, std = encoder.input_mean, encoder.input_std
    config = DMSLConfig(backbone=args.backbone, weights=str(weights), mode=args.mode, batch_size=args.batch_size,
                        epochs=args.epochs, patience=args.epochs + 1, folds=1, num_workers=0, freeze_backbone=True,
                        augment=False, seed=0)
    full = TupleDataset(data, config.magnifications)
    classes = full.classes
    val_patients = {"s2", "s3"}  # render_folder's patients are one class each: s0, s2 "a"; s1, s3 "b"
    train_rows = [r for r in full.rows if r["patient_id"] not in val_patients]
    val_rows = [r for r in full.rows if r["patient_id"] in val_patients]
    transform = tuple_transform(mean, std, train=False)

    def images(rows: list[dict]) -> TupleDataset:
        return TupleDataset(data, config.magnifications, rows=rows, classes=classes, transform=transform)

    print(f"{args.backbone} ({n_params / 1e6:.1f}M parameters per branch, frozen), mode {args.mode}, "
          f"{len(train_rows)} training + {len(val_rows)} validation tuples at {args.size}/{args.size // 2} px, "
          f"{args.epochs} epochs, batch {args.batch_size}, {torch.get_num_threads()} threads")
    results: dict[str, dict[str, Any]] = {}
    for name in ("plain", "cached"):
        store = None
        if name == "cached":
            store = FeatureStore(work / "features", data, [r["tuple_id"] for r in full.rows],
                                 magnifications=config.magnifications, settings={"size": args.size}, mean=mean,
                                 std=std, batch_size=args.batch_size)
        timer = EpochTimer()
        t0 = time.perf_counter()
        fit = fit_fold(config.replace(cache_features=name == "cached"), images(train_rows), images(val_rows),
                       work / f"run-{name}", class_names=classes, progress=False, callbacks=[timer], features=store)
        total = time.perf_counter() - t0
        task = load_task(fit.best_checkpoint)
        val: Any = images(val_rows)
        if store is not None:
            val = store.dataset(task.model, val)
        probs = predict_probs([task], val, batch_size=args.batch_size)
        epochs = timer.epochs
        results[name] = {"epochs": epochs, "total": total, "before": total - sum(epochs), "probs": probs,
                         "acc": float((probs.argmax(1) == np.asarray(val.targets)).mean())}
        print(f"{name:>7}: epochs {', '.join(f'{e:.2f}' for e in epochs)} s; before the first epoch "
              f"{results[name]['before']:.2f} s (cache fill for 'cached'); validation accuracy {results[name]['acc']:.4f}")
    later = {n: float(np.median(r["epochs"][1:] or r["epochs"])) for n, r in results.items()}
    ratio = later["plain"] / later["cached"]
    diff = float(np.abs(results["plain"]["probs"] - results["cached"]["probs"]).max())
    first = (results["cached"]["before"] + results["cached"]["epochs"][0]) / results["plain"]["epochs"][0]
    print(f"epochs after the first: plain {later['plain']:.2f} s, cached {later['cached']:.3f} s -> {ratio:.1f}x faster "
          f"({'meets' if ratio >= 20 else 'MISSES'} >= 20x); first epoch with the fill: {first:.2f}x the plain one")
    print(f"largest validation probability difference: {diff:.2e} ({'within' if diff <= 1e-4 else 'OVER'} 1e-4); "
          f"accuracy plain {results['plain']['acc']:.4f}, cached {results['cached']['acc']:.4f}")
    return 0 if ratio >= 20 and diff <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
