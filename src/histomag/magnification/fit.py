"""Training the magnification models with Lightning: task, data module, the fit.

``train_magnifier(DATA, RUN, config)`` makes a run folder, whose layout
:class:`~histomag.magnification.runfolder.MagnificationRun` owns.

Example:
    >>> cfg = preset("tiny", epochs=2)
    >>> run = train_magnifier("magset", "runs/mag", cfg, progress=False)  # doctest: +SKIP
    >>> model, cfg = load_magnifier(run)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from histomag.data.atomic import atomic_write_csv
from histomag.errors import CheckpointError, ConfigError
from histomag.magnification.network import MODEL_TYPE_CLASSIFIER, recalibrate_statistics
from histomag.fitloop import (
    checkpoint_callbacks,
    checkpoint_plugins,
    default_precision,
    ensure_best,
    launched_rank_zero,
    lightning_quiet,
    make_loader,
)
from histomag.magnification.config import (
    ARCHITECTURE_FIELDS,
    CHECKPOINT_FORMAT,
    PRESETS,
    MagnifierConfig,
    build_magnifier,
    preset,
)
from histomag.magnification.data import (
    MagnificationDataset,
    filter_levels,
    read_manifest,
)
from histomag.magnification.infer import load_magnifier, predict_magnifications
from histomag.magnification.runfolder import MAG_TRAIN_HINT, MagnificationRun

__all__ = [
    "PRESETS",
    "MAG_TRAIN_HINT",
    "MagnificationDataModule",
    "MagnifierConfig",
    "MagnifierTask",
    "build_magnifier",
    "lightning_quiet",
    "load_magnifier",
    "predict_magnifications",
    "preset",
    "train_classifier",
    "train_magnifier",
]


class MagnifierTask(L.LightningModule):
    """Model + loss + metrics for one magnification model (regressor or classifier).

    Regressor: Huber loss on the target (magnification or its log); logs ``val_mae`` and
    ``val_acc1`` on clamped magnifications. Classifier: cross-entropy on the nearest level;
    logs ``val_acc`` and ``val_mae`` of the predicted level. AdamW with ReduceLROnPlateau on
    ``config.monitor``.

    Args:
        config: a :class:`MagnifierConfig` or its ``to_dict()``.
        model: an already built network (default: :func:`build_magnifier`).
    """

    def __init__(self, config: MagnifierConfig | dict[str, Any], model: nn.Module | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, MagnifierConfig) else MagnifierConfig.from_dict(config)
        self.config = cfg
        self.save_hyperparameters({"config": cfg.to_dict()})
        self.model = model if model is not None else build_magnifier(cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, mag = batch
        out = self.model(x).float()
        if self.config.is_classifier:
            labels = self.model.level_index(mag)
            loss = F.cross_entropy(out, labels)
            pred = self.model.level_values[out.argmax(dim=1)]
            extra = {f"{stage}_acc": (out.argmax(dim=1) == labels).float().mean()}
        else:
            loss = F.huber_loss(out, self.model.to_target(mag.float()), delta=self.config.huber_delta)
            pred = self.model.from_target(out).clamp(*self.config.mag_range)
            extra = {f"{stage}_acc1": ((pred - mag).abs() <= 1.0).float().mean()}
        n = x.shape[0]
        on_step = stage == "train"
        # validation figures are averaged over the processes of a distributed run: the plateau scheduler and the
        # best checkpoint then follow the whole validation set, the same on every process
        sync = stage == "val"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=sync)
        self.log(f"{stage}_mae", (pred.detach() - mag).abs().mean(), on_step=False, on_epoch=True,
                 prog_bar=stage == "val", batch_size=n, sync_dist=sync)
        self.log_dict(extra, on_step=False, on_epoch=True, batch_size=n, sync_dist=sync)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def on_validation_epoch_start(self) -> None:
        """Recalibrate the ASM scale and BatchNorm statistics on training batches (not in the sanity check)."""
        trainer = self.trainer
        n = self.config.calibration_batches
        datamodule = getattr(trainer, "datamodule", None)
        fitting = trainer.state.fn == TrainerFn.FITTING
        if n <= 0 or not fitting or trainer.sanity_checking or not hasattr(datamodule, "calibration_dataloader"):
            return
        with torch.inference_mode(False):
            recalibrate_statistics(self.model, datamodule.calibration_dataloader(trainer.current_epoch),
                                   device=self.device, max_batches=n)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.config
        opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.lr_factor,
                                                           patience=cfg.patience, min_lr=cfg.min_lr)
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": sched, "monitor": cfg.monitor, "interval": "epoch", "frequency": 1}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["histomag"] = {"model_type": self.config.model_type, "config": self.config.to_dict(),
                                  "format": CHECKPOINT_FORMAT}


class MagnificationDataModule(L.LightningDataModule):
    """Train/val loaders of a magnification set for one config.

    The classifier's rows are those within ``config.level_tolerance`` of a level.

    Args:
        data_dir: the magnification-set folder.
        config: the run's config.
        mean: normalisation mean (the backbone's ``input_mean``).
        std: normalisation std.

    Raises:
        DatasetError: no manifest, or no train/val rows (checked on construction).
    """

    def __init__(self, data_dir: str | Path, config: MagnifierConfig, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.config = config
        records = read_manifest(self.data_dir)
        if config.is_classifier:
            records = filter_levels(records, config.levels, config.level_tolerance)
        kw = dict(crop=config.crop, mean=mean, std=std, color_jitter=config.color_jitter)
        self.train_set = MagnificationDataset(self.data_dir, "train", train=True, **kw,  # type: ignore[arg-type]
                                              records=[r for r in records if r.split == "train"])
        self.val_set = MagnificationDataset(self.data_dir, "val", train=False, **kw,  # type: ignore[arg-type]
                                            records=[r for r in records if r.split == "val"])

    def train_dataloader(self) -> Any:
        cfg = self.config
        return make_loader(self.train_set, cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                           drop_last=len(self.train_set) > cfg.batch_size, seed=cfg.seed)

    def calibration_dataloader(self, epoch: int = 0) -> Any:
        """Shuffled, augmented training batches for :func:`recalibrate_statistics` (new order per epoch)."""
        cfg = self.config
        return make_loader(self.train_set, cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                           drop_last=len(self.train_set) > cfg.batch_size, seed=cfg.seed + 1000 + epoch,
                           persistent=False)

    def val_dataloader(self) -> Any:
        return make_loader(self.val_set, self.config.batch_size, shuffle=False, num_workers=self.config.num_workers)


def _check_resume(run_dir: Path, config: MagnifierConfig) -> None:
    run = MagnificationRun(run_dir)
    if not run.exists():
        return
    try:
        old = run.read_config()
    except CheckpointError:
        return
    new = config.to_dict()
    diffs = [f"{k}={old.get(k)!r} (now {new[k]!r})" for k in ARCHITECTURE_FIELDS if old.get(k) != new[k]]
    if diffs:
        raise ConfigError(f"run folder {run_dir} was trained with {', '.join(diffs)}; "
                          "keep those settings to resume, or give another output folder")


def _merge_logs(run: MagnificationRun) -> None:
    """Concatenate every ``logs/version_N/metrics.csv`` (in N order) into ``RUN/metrics.csv``."""
    parts = sorted(run.logs_dir.glob("version_*/metrics.csv"),
                   key=lambda p: int(p.parent.name.split("_")[-1]) if p.parent.name.split("_")[-1].isdigit() else -1)
    rows: list[dict[str, str]] = []
    keys: list[str] = []
    for part in parts:
        with open(part, newline="") as fh:
            reader = csv.DictReader(fh)
            for k in reader.fieldnames or []:
                if k not in keys:
                    keys.append(k)
            rows.extend(reader)
    if rows:
        front = [k for k in ("epoch", "step") if k in keys]
        atomic_write_csv(run.metrics_csv_path, front + sorted(k for k in keys if k not in front), rows)


def _trainer_kwargs(config: MagnifierConfig) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    kw: dict[str, Any] = dict(accelerator="auto", devices=config.devices, num_nodes=config.num_nodes,
                              strategy=config.strategy, precision=default_precision(config.precision),
                              max_epochs=config.epochs,
                              enable_model_summary=False, num_sanity_val_steps=1,
                              deterministic=not cuda)  # CUDA has no deterministic adaptive-pool backward
    if config.max_time_minutes is not None:
        kw["max_time"] = timedelta(minutes=config.max_time_minutes)
    return kw


def train_magnifier(data_dir: str | Path | None, out_dir: str | Path, config: MagnifierConfig, *,
                    progress: bool = True, resume: bool = True, datamodule: Any = None,
                    extra_config: dict[str, Any] | None = None) -> Path:
    """Train a magnification regressor or classifier; ``out_dir`` becomes its run folder.

    Args:
        data_dir: magnification-set folder (``manifest.csv`` with train and val rows).
        out_dir: the run folder (created).
        config: the run's settings (``config.model_type`` picks regressor or classifier).
        progress: show a progress bar (stderr) and Lightning's info messages.
        resume: continue from ``out_dir/checkpoints/last.ckpt`` when it exists.
        datamodule: instead of a magnification set, a callable ``(config, mean, std) ->
            LightningDataModule`` (with ``train_set`` and optionally ``calibration_dataloader``),
            e.g. crops drawn online from real sources (:mod:`histomag.magnification.cv`).
        extra_config: more entries for the run's ``config.json`` (what the data were).

    Returns:
        The run folder.

    Raises:
        DatasetError: bad or incomplete magnification set.
        ConfigError: resuming with different architecture settings, or ``resume=False`` on a
            folder that already holds checkpoints.

    Distributed training (``config.devices``/``num_nodes``/``strategy``, e.g. ``strategy="ddp"``):
    every process calls this with the same arguments; global rank 0 writes the run folder (config,
    checkpoints, logs, summary), the others train with it and write nothing.
    """
    from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger

    run_dir = Path(out_dir)
    run = MagnificationRun(run_dir)
    ckpt_dir = run.checkpoint_dir
    last = run.checkpoint_path("last")
    writer = launched_rank_zero()  # the other ranks of a distributed launch leave the run folder to rank 0
    if writer and last.is_file() and not resume:
        raise ConfigError(f"run folder {run_dir} already holds checkpoints; resume it or give another output folder")
    if last.is_file():
        _check_resume(run_dir, config)
    started = time.perf_counter()
    with lightning_quiet(progress):
        L.seed_everything(config.seed, workers=True, verbose=False)
        task = MagnifierTask(config)
        backbone = task.model.backbone
        if datamodule is not None:
            data = datamodule(config, backbone.input_mean, backbone.input_std)
        else:
            data = MagnificationDataModule(Path(data_dir), config, backbone.input_mean, backbone.input_std)  # type: ignore[arg-type]
        if writer:
            run.write_config(config.to_dict(), data_dir=data_dir, extra=extra_config,
                             versions={"torch": torch.__version__, "lightning": L.__version__})
        checkpoint, latest = checkpoint_callbacks(ckpt_dir, config.monitor)
        callbacks: list[Any] = [checkpoint, latest, LearningRateMonitor(logging_interval="epoch")]
        if progress:
            callbacks.append(RichProgressBar(console_kwargs={"stderr": True}))
        n_batches = max(1, len(data.train_set) // config.batch_size)
        trainer = L.Trainer(**_trainer_kwargs(config), default_root_dir=run_dir, callbacks=callbacks,
                            logger=CSVLogger(run_dir, name="logs"), enable_progress_bar=progress,
                            log_every_n_steps=min(50, n_batches), plugins=checkpoint_plugins())
        deterministic_before = torch.are_deterministic_algorithms_enabled()
        try:
            trainer.fit(task, datamodule=data, ckpt_path=last if resume and last.is_file() else None)
        finally:
            torch.use_deterministic_algorithms(deterministic_before)
            if writer and trainer.is_global_zero:
                _merge_logs(run)
    if not (writer and trainer.is_global_zero):
        return run_dir
    ensure_best(ckpt_dir)
    score = checkpoint.best_model_score
    run.write_train_summary({
        "best_" + config.monitor: None if score is None else float(score),
        "epochs_completed": int(trainer.current_epoch), "global_step": int(trainer.global_step),
        "seconds": round(time.perf_counter() - started, 2), "interrupted": bool(trainer.interrupted),
    })
    return run_dir


def train_classifier(data_dir: str | Path, out_dir: str | Path, config: MagnifierConfig, *, progress: bool = True,
                     resume: bool = True) -> Path:
    """Train the level-classification baseline (``config`` with ``model_type`` set to the classifier).

    Same machinery, run folder and resume rules as :func:`train_magnifier`; the classes are
    ``config.levels`` and only rows within ``config.level_tolerance`` of a level are used.
    """
    return train_magnifier(data_dir, out_dir, config.replace(model_type=MODEL_TYPE_CLASSIFIER), progress=progress,
                           resume=resume)
