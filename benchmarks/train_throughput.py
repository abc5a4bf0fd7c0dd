"""DMSL training throughput: real data loading vs. the model-only ceiling, in one run.

Builds a tiled dataset folder (``histomag.synth.make_cohort`` + ``histomag.tiling.jobs.tile_slides``;
a folder of rendered tuples when the synthetic-cohort module is unavailable), then runs the same
Lightning optimisation steps twice:

1. ``data``: a :class:`~histomag.data.tuples.TupleDataset` (PNG decode + tuple augmentation +
   normalisation) through a DataLoader with ``--workers`` processes; and, for the synthetic cohort,
   the same tuples read straight from its slides (:class:`~histomag.data.tuples.SlideTupleDataset`,
   as ``histomag dmsl train SLIDES...`` does: JPEG tile decode + resampling, no PNG);
2. ``model``: the same number of batches, materialised once and kept in memory (on the device),
   so only the forward/backward/optimizer steps remain.

It prints both tuples/s and their ratio (1.0 = data loading keeps up with the model). CPU
default: ``tiny`` backbone at 256/128 px. With CUDA: Inception-v3 at the paper's 600/300 px,
batch 32, 16-mixed precision.

Usage::

    python benchmarks/train_throughput.py                      # defaults for this machine
    python benchmarks/train_throughput.py --backbone resnet18 --size 224 --workers 4 --steps 20
    python benchmarks/train_throughput.py --data DATASET_FOLDER  # use an existing tiled folder
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

CUDA = torch.cuda.is_available()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="existing dataset folder (default: build one in --work)")
    p.add_argument("--work", type=Path, help="folder for the synthetic cohort and dataset (default: a temp dir)")
    p.add_argument("--backbone", default="inception_v3" if CUDA else "tiny")
    p.add_argument("--mags", default="40,20")
    p.add_argument("--size", type=int, default=600 if CUDA else 256, help="px at the highest magnification")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--steps", type=int, default=30 if CUDA else 12, help="timed optimisation steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--slides", type=int, default=4)
    p.add_argument("--slide-size", type=int, default=6144 if CUDA else 3072, help="synthetic slide side in px (40x)")
    p.add_argument("--mode", default="sim", choices=("sim", "mm", "mscn"))
    return p.parse_args()


# ----- dataset ----------------------------------------------------------------------------------
def build_dataset(work: Path, mags: tuple[float, ...], size: int, n_slides: int, slide_size: int,
                  min_tuples: int) -> tuple[Path, str, Any]:
    """A tiled dataset folder in ``work/data``; returns (folder, how it was made, the slide source or None)."""
    data = work / "data"
    try:
        from histomag.synth import make_cohort
    except ImportError:
        return render_folder(data, mags, size, min_tuples), "rendered tuples (histomag.synth.make_cohort unavailable)", None
    from histomag.data.folder import TileSettings
    from histomag.data.sources import slide_jobs
    from histomag.tiling.jobs import tile_slides
    from histomag.data.tuples import SlideSource

    cohort = work / "cohort"
    if not cohort.is_dir():
        make_cohort(cohort, n_slides=n_slides, seed=0, size_px=slide_size)
    jobs, _ = slide_jobs([cohort])
    settings = TileSettings(mags, size, overlap=0.0, min_tissue=0.5)
    if not (data / "manifest.csv").is_file():
        tile_slides(jobs, settings, data, workers=min(len(jobs), os.cpu_count() or 1), progress=False)
    return data, f"histomag synth ({n_slides} slides of {slide_size} px) + histomag tile", \
        SlideSource(tuple(jobs), settings)


def render_folder(root: Path, mags: tuple[float, ...], size: int, n: int) -> Path:
    """Fallback: ``n`` tuples of smooth random tissue-like texture, 2 classes, 4 patients."""
    from scipy.ndimage import gaussian_filter

    from histomag.data.atomic import atomic_write_csv, atomic_write_png
    from histomag.data.folder import image_column, manifest_columns
    from histomag.tiling.fields import downsample_area

    mags = tuple(sorted(mags, reverse=True))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        noise = gaussian_filter(rng.random((size, size, 3)), (2 + 2 * (i % 2), 2 + 2 * (i % 2), 0))
        big = (np.clip((noise - noise.min()) / np.ptp(noise), 0, 1) * 180 + 50).astype(np.uint8)
        tid, slide = f"t{i:05d}", f"s{i % 4}"
        row = {"tuple_id": tid, "slide_id": slide, "patient_id": slide, "label": ("a", "b")[i % 2],
               "mode": "same-fov", "magnifications": ";".join(f"{m:g}" for m in mags)}
        for m in mags:
            img = downsample_area(big, int(round(size * m / mags[0])))
            rel = f"images/{slide}/{tid}_{m:g}x.png"
            atomic_write_png(root / rel, img)
            row[image_column(m)] = rel
        rows.append(row)
    (root / "dataset.json").write_text(json.dumps({"version": 1, "magnifications": list(mags), "size": size,
                                                    "mode": "same-fov"}))
    atomic_write_csv(root / "manifest.csv", manifest_columns(mags), rows)
    return root


# ----- timing -----------------------------------------------------------------------------------
class StepTimer:
    """A Lightning callback timing steps ``warmup .. warmup + steps`` (data waits included)."""

    def __init__(self, warmup: int) -> None:
        import lightning.pytorch as L

        timer = self
        self.warmup, self.start, self.end, self.tuples = warmup, 0.0, 0.0, 0

        class _CB(L.Callback):
            def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
                if trainer.global_step == timer.warmup:
                    _sync()
                    timer.start = time.perf_counter()

            def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
                if trainer.global_step > timer.warmup:
                    timer.tuples += int(batch[1].shape[0])
                    _sync()
                    timer.end = time.perf_counter()

        self.callback = _CB()

    @property
    def rate(self) -> float:
        return self.tuples / max(self.end - self.start, 1e-9)


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


class InMemoryBatches(torch.utils.data.Dataset):
    """Pre-collated batches (already on the device); item i is batch i."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Any:
        return self.batches[i]


def run_steps(task: Any, loader: Any, steps: int, warmup: int) -> float:
    """Fit ``warmup + steps`` optimisation steps; tuples/s over the timed ones."""
    import lightning.pytorch as L

    timer = StepTimer(warmup)
    trainer = L.Trainer(accelerator="auto", devices=1, precision="16-mixed" if CUDA else "32-true",
                        max_steps=warmup + steps, max_epochs=-1, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer.callback])
    trainer.fit(task, train_dataloaders=loader)
    return timer.rate


def main() -> int:
    args = parse_args()
    import logging

    from histomag.data.tuples import TupleDataset, tuple_transform
    from histomag.resolution import parse_magnifications
    from histomag.fitloop import make_loader
    from histomag.dmsl.config import DMSLConfig
    from histomag.dmsl.fit import DMSLTask

    for name in ("lightning.pytorch", "lightning.fabric"):  # after the import, which sets them to INFO
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|smaller than the logging interval"
                                              r"|no `val_dataloader`|LeafSpec).*")

    mags = tuple(parse_magnifications(args.mags))
    n_needed = args.batch_size * (args.steps + args.warmup)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if args.data:
            data, how, source = args.data, "given folder", None
        else:
            data, how, source = build_dataset(work, mags, args.size, args.slides, args.slide_size, n_needed)
        built = time.perf_counter() - t0
        config = DMSLConfig(mode=args.mode, backbone=args.backbone, magnifications=mags, batch_size=args.batch_size,
                            num_workers=args.workers)
        from histomag.backbones import create_backbone

        backbone = create_backbone(args.backbone)
        dataset = TupleDataset(data, mags, transform=tuple_transform(backbone.input_mean, backbone.input_std,
                                                                     train=True))
        if len(dataset.classes) < 2:
            print(f"{data}: needs labelled tuples of two classes, has {dataset.classes}", file=sys.stderr)
            return 2
        torch.manual_seed(0)
        task = DMSLTask(config, dataset.classes)
        loader = make_loader(dataset, args.batch_size, shuffle=True, num_workers=args.workers, seed=0)
        data_rate = run_steps(task, loader, args.steps, args.warmup)
        slide_rate = None
        if source is not None:  # the same tuples read straight from the slides (dmsl train SLIDES...)
            from histomag.data.tuples import SlideTupleDataset

            from_slides = SlideTupleDataset(list(source.jobs), source.settings, magnifications=mags,
                                            transform=dataset.transform, classes=dataset.classes)
            torch.manual_seed(0)
            slide_task = DMSLTask(config, dataset.classes)
            slide_rate = run_steps(slide_task, make_loader(from_slides, args.batch_size, shuffle=True,
                                                           num_workers=args.workers, seed=0), args.steps, args.warmup)

        device = torch.device("cuda" if CUDA else "cpu")
        batches, it = [], iter(make_loader(dataset, args.batch_size, shuffle=True, num_workers=args.workers, seed=1))
        while len(batches) < args.steps + args.warmup:
            try:
                xs, y, idx = next(it)
            except StopIteration:
                it = iter(make_loader(dataset, args.batch_size, shuffle=True, num_workers=0, seed=len(batches)))
                continue
            batches.append(([x.to(device) for x in xs], y.to(device), idx.to(device)))
        model_task = DMSLTask(config, dataset.classes)
        model_rate = run_steps(model_task, torch.utils.data.DataLoader(InMemoryBatches(batches), batch_size=None,
                                                                         shuffle=False), args.steps, args.warmup)
    sizes = "/".join(str(int(round(args.size * m / max(mags)))) for m in mags)
    device_name = torch.cuda.get_device_name(0) if CUDA else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    print(f"device: {device_name}; dataset: {how}, {len(dataset)} tuples (built in {built:.1f} s)")
    print(f"model: {args.backbone} mode {args.mode}, {'+'.join(f'{m:g}x' for m in mags)} at {sizes} px, "
          f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, {args.workers} workers")
    print(f"training from the folder   : {data_rate:8.1f} tuples/s")
    if slide_rate is not None:
        print(f"training from the slides   : {slide_rate:8.1f} tuples/s")
    print(f"model-only ceiling         : {model_rate:8.1f} tuples/s")
    print(f"ratio (folder / model)     : {data_rate / model_rate:8.2f}")
    if slide_rate is not None:
        print(f"ratio (slides / model)     : {slide_rate / model_rate:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
