"""The paper presets on this machine: training throughput against the model-only ceiling, and peak memory.

Two presets, each for a bounded number of optimisation steps on synthetic inputs:

* ``dmsl``: :meth:`DMSLConfig.from_preset("paper") <histomag.dmsl.config.DMSLConfig.from_preset>`
  (Inception-v3, one branch per magnification, 40x at 600 px + 20x at 300 px, batch 32, Adam,
  the paper's SIM loss);
* ``magnifier``: the magnifier's ``paper`` preset (:data:`histomag.magnification.config.PRESETS`:
  ResNet50 regressor on 224 px crops, batch 64, AdamW, Huber loss).

Each preset is measured twice, in one run:

1. ``pipeline``: ``lightning.Trainer.fit`` as histomag trains (its task, its precision: 16-mixed
   on a GPU), fed by a DataLoader whose dataset makes each synthetic tuple (crop) on the CPU
   (uint8 pixels -> normalised float tensors) in ``--workers`` processes;
2. ``ceiling``: the same model, loss and optimiser in a plain loop over batches preallocated on
   the device (forward + backward + step; autocast and a gradient scaler on a GPU): no data
   loading, no Lightning.

It prints samples/s for both, their ratio (1.0: the pipeline keeps up with the model) and the peak
memory of each phase: ``torch.cuda.max_memory_allocated`` on a GPU (reset per phase), the
process's peak resident set size on a CPU (it never goes down, so later phases show at least the
earlier peaks). ``--json FILE`` also writes the figures.

Usage::

    python benchmarks/gpu_presets.py                       # every preset on the GPU (CPU without one)
    python benchmarks/gpu_presets.py --device cpu --steps 2  # smoke run on a CPU
    python benchmarks/gpu_presets.py --presets dmsl --steps 50 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

PRESET_NAMES = ("dmsl", "magnifier")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--presets", default=",".join(PRESET_NAMES), help="comma-separated: dmsl, magnifier")
    p.add_argument("--steps", type=int, default=None, help="timed steps per phase (default: 30 on a GPU, 2 on a CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 on a GPU, 1 on a CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="override the presets' batch sizes (32 and 64)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the presets' input sizes (e.g. 0.25 for a quick CPU check; 1.0 is the paper's)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: min(8, CPUs))")
    p.add_argument("--backbone", default=None, help="override both presets' backbone (e.g. tiny for a test)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args(argv)


# ----- synthetic inputs -------------------------------------------------------------------------
class SyntheticTuples(Dataset):
    """Tuples of random uint8 fields, one per size, normalised on the CPU as a real loader's transform does."""

    def __init__(self, n: int, sizes: tuple[int, ...], n_classes: int, mean: Any, std: Any) -> None:
        self.n, self.sizes, self.n_classes = n, sizes, n_classes
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int, int]:
        g = torch.Generator().manual_seed(i)
        xs = [(torch.randint(0, 256, (3, s, s), dtype=torch.uint8, generator=g).float() / 255 - self.mean) / self.std
              for s in self.sizes]
        return xs, i % self.n_classes, i


class SyntheticCrops(Dataset):
    """Random uint8 crops with a magnification each, normalised on the CPU (the magnifier's batches)."""

    def __init__(self, n: int, crop: int, levels: tuple[float, ...], mean: Any, std: Any) -> None:
        self.n, self.crop, self.levels = n, crop, levels
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        x = (torch.randint(0, 256, (3, self.crop, self.crop), dtype=torch.uint8, generator=g).float() / 255
             - self.mean) / self.std
        return x, torch.tensor(float(self.levels[i % len(self.levels)]))


# ----- measuring --------------------------------------------------------------------------------
class Meter:
    """Wall time of steps ``warmup .. warmup + steps`` and the peak memory of one phase."""

    def __init__(self, device: torch.device, warmup: int) -> None:
        self.device, self.warmup = device, warmup
        self.start = self.end = 0.0
        self.samples = 0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def before(self, index: int) -> None:
        """Call before step ``index`` (0-based): the clock starts at the first timed step."""
        if index == self.warmup:
            self.sync()
            self.start = time.perf_counter()

    def after(self, index: int, batch_size: int) -> None:
        """Call after step ``index`` finished."""
        if index >= self.warmup:
            self.samples += batch_size
            self.sync()
            self.end = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.samples / max(self.end - self.start, 1e-9)


def lightning_pipeline(task: Any, dataset: Dataset, *, batch_size: int, workers: int, device: torch.device,
                       precision: str, warmup: int, steps: int) -> dict[str, float]:
    """``Trainer.fit`` for ``warmup + steps`` steps from a DataLoader; samples/s over the timed steps."""
    import lightning.pytorch as L

    meter = Meter(device, warmup)

    class _Timer(L.Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            meter.before(trainer.global_step)

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            meter.after(trainer.global_step - 1, batch_size)

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=False)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
                        max_steps=warmup + steps, max_epochs=-1, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[_Timer()])
    meter.reset_memory()
    trainer.fit(task, train_dataloaders=loader)
    return {"samples_per_s": meter.rate, "peak_mib": meter.peak_mib(), "timed_samples": meter.samples}


def model_ceiling(model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor], batch: tuple, *,
                  optimizer: torch.optim.Optimizer, device: torch.device, precision: str, batch_size: int,
                  warmup: int, steps: int) -> dict[str, float]:
    """Forward + backward + step on one batch kept on the device, ``warmup + steps`` times."""
    meter = Meter(device, warmup)
    meter.reset_memory()
    model.train()
    mixed = device.type == "cuda" and precision.startswith("16")
    scaler = torch.amp.GradScaler("cuda", enabled=mixed)
    for i in range(warmup + steps):
        meter.before(i)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=mixed):
            loss = loss_fn(model, batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        meter.after(i, batch_size)
    return {"samples_per_s": meter.rate, "peak_mib": meter.peak_mib(), "timed_samples": meter.samples}


# ----- the presets ------------------------------------------------------------------------------
def dmsl_preset(args: argparse.Namespace, device: torch.device, precision: str) -> dict[str, Any]:
    from histomag.dmsl.config import DMSLConfig
    from histomag.dmsl.fit import DMSLTask

    changes: dict[str, Any] = {"num_workers": args.workers}
    if args.batch_size:
        changes["batch_size"] = args.batch_size
    if args.backbone:
        changes["backbone"] = args.backbone
    config = DMSLConfig.from_preset("paper", **changes)
    top = max(config.magnifications)
    sizes = tuple(max(32, int(round(600 * args.scale * m / top))) for m in config.magnifications)
    classes = ["benign", "malignant"]
    bs, n = config.batch_size, config.batch_size * (args.warmup + args.steps)

    torch.manual_seed(0)
    task = DMSLTask(config, classes)
    data = SyntheticTuples(n, sizes, len(classes), task.input_mean, task.input_std)
    pipeline = lightning_pipeline(task, data, batch_size=bs, workers=args.workers, device=device,
                                  precision=precision, warmup=args.warmup, steps=args.steps)
    del task
    torch.manual_seed(0)
    task = DMSLTask(config, classes).to(device)
    xs = [torch.randn(bs, 3, s, s, device=device) for s in sizes]
    y = torch.arange(bs, device=device) % len(classes)

    def loss_fn(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        return task.loss(model(batch[0]), batch[1], beta=task.loss.beta)[0]

    ceiling = model_ceiling(task.model, loss_fn, (xs, y), optimizer=torch.optim.Adam(task.parameters(), lr=config.lr),
                            device=device, precision=precision, batch_size=bs, warmup=args.warmup, steps=args.steps)
    what = (f"DMSL paper preset: {config.backbone}, mode {config.mode}, "
            + " + ".join(f"{m:g}x@{s}" for m, s in zip(config.magnifications, sizes)) + f" px, batch {bs}")
    return {"preset": "dmsl", "what": what, "batch_size": bs, "pipeline": pipeline, "ceiling": ceiling}


def magnifier_preset(args: argparse.Namespace, device: torch.device, precision: str) -> dict[str, Any]:
    import torch.nn.functional as F

    from histomag.magnification.config import preset
    from histomag.magnification.fit import MagnifierTask

    changes: dict[str, Any] = {"num_workers": args.workers, "calibration_batches": 0}
    if args.batch_size:
        changes["batch_size"] = args.batch_size
    if args.backbone:
        changes["backbone"] = args.backbone
    config = preset("paper", **changes)
    crop = max(32, int(round(config.crop * args.scale)))
    bs, n = config.batch_size, config.batch_size * (args.warmup + args.steps)

    class _Task(MagnifierTask):  # the preset's AdamW, without the plateau scheduler (no validation here)
        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    torch.manual_seed(0)
    task = _Task(config)
    backbone = task.model.backbone
    data = SyntheticCrops(n, crop, config.levels, backbone.input_mean, backbone.input_std)
    pipeline = lightning_pipeline(task, data, batch_size=bs, workers=args.workers, device=device,
                                  precision=precision, warmup=args.warmup, steps=args.steps)
    del task
    torch.manual_seed(0)
    task = _Task(config).to(device)
    x = torch.randn(bs, 3, crop, crop, device=device)
    mag = torch.tensor([config.levels[i % len(config.levels)] for i in range(bs)], device=device)

    def loss_fn(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        out = model(batch[0]).float()
        return F.huber_loss(out, model.to_target(batch[1].float()), delta=config.huber_delta)

    ceiling = model_ceiling(task.model, loss_fn, (x, mag),
                            optimizer=torch.optim.AdamW(task.parameters(), lr=config.lr, weight_decay=config.weight_decay),
                            device=device, precision=precision, batch_size=bs, warmup=args.warmup, steps=args.steps)
    what = f"magnifier paper preset: {config.backbone} regressor, {crop} px crops, batch {bs}"
    return {"preset": "magnifier", "what": what, "batch_size": bs, "pipeline": pipeline, "ceiling": ceiling}


RUNNERS = {"dmsl": dmsl_preset, "magnifier": magnifier_preset}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in names if p not in RUNNERS]
    if unknown:
        print(f"unknown preset(s) {', '.join(unknown)}; valid: {', '.join(RUNNERS)}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here; use --device cpu", file=sys.stderr)
        return 2
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    args.steps = args.steps if args.steps is not None else (30 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    if args.steps < 1 or args.warmup < 0:
        print("--steps must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    precision = "16-mixed" if cuda else "32-true"

    import lightning.pytorch  # noqa: F401 - its import sets its loggers to INFO; quieten them after it

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|smaller than the logging interval"
                                              r"|no `val_dataloader`|LeafSpec|max_steps|ReduceLROnPlateau).*")
    if cuda:
        torch.backends.cudnn.benchmark = True
        where = f"{torch.cuda.get_device_name(device)}, {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB"
    else:
        where = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    print(f"device: {where}; precision {precision}; {args.steps} timed steps after {args.warmup} warm-up; "
          f"{args.workers} loader workers; torch {torch.__version__}")
    results = []
    for name in names:
        r = RUNNERS[name](args, device, precision)
        results.append(r)
        p, c = r["pipeline"], r["ceiling"]
        mem = "max_memory_allocated" if cuda else "peak RSS"
        print(f"\n{r['what']}")
        print(f"  pipeline (Lightning + DataLoader): {p['samples_per_s']:9.1f} samples/s   {mem} {p['peak_mib']:9.0f} MiB")
        print(f"  model-only ceiling               : {c['samples_per_s']:9.1f} samples/s   {mem} {c['peak_mib']:9.0f} MiB")
        print(f"  ratio (pipeline / ceiling)       : {p['samples_per_s'] / max(c['samples_per_s'], 1e-9):9.2f}")
    if args.json:
        args.json.write_text(json.dumps({"device": where, "precision": precision, "steps": args.steps,
                                         "warmup": args.warmup, "workers": args.workers, "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
