"""DMSL training with PyTorch Lightning: task, data loading, one fold's fit, checkpoints.

Diao et al., IEEE JBHI 2023: one CNN branch per magnification, loss ``alpha * CE + beta * SIM``
(paper: alpha = beta = 0.5 with its raw SIM; here by default alpha = 0.5, beta = 0.1 with the
normalised ``dist`` SIM and a 2-epoch warm-up of beta, see docs/dmsl.md), Adam with lr 1e-3,
batch 32. ``mode`` picks DMSL (``sim``) or a baseline (``mm`` without SIM, ``single``
magnification, ``mscn`` on context tuples).

A fold folder holds::

    FOLD/checkpoints/best.ckpt   lowest validation loss        FOLD/checkpoints/last.ckpt   for resume
    FOLD/logs/version_N/         CSVLogger (and TensorBoard when installed)

Multi-GPU and multi-node training go through Lightning's strategies: ``devices``,
``num_nodes`` and ``strategy`` are passed to the Trainer unchanged.

The run's :class:`~histomag.dmsl.config.DMSLConfig` is in :mod:`histomag.dmsl.config` (no torch);
cross-validation is in :mod:`histomag.dmsl.cv`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from histomag.errors import CheckpointError, ConfigError
from histomag.dmsl.network import MultiMagNet
from histomag.dmsl.similarity import DMSLLoss
from histomag.dmsl.config import RUNTIME_FIELDS, SELECT_ON, DMSLConfig
from histomag.dmsl.runfolder import MODEL_TYPE, DMSL_TRAIN_HINT
from histomag.fitloop import (
    checkpoint_callbacks,
    checkpoint_plugins,
    default_precision,
    ensure_best,
    lightning_quiet,
    make_loader,
    read_checkpoint,
)

log = logging.getLogger(__name__)

def monitor_key(config: DMSLConfig, has_val: bool) -> str:
    """The logged metric that early stopping and the best checkpoint minimise."""
    if config.select_on == "ce":
        return "val/ce" if has_val else "train/ce"
    return "val/loss" if has_val else "train/loss_epoch"


def sim_weight(beta: float, warmup: float, progress: float) -> float:
    """SIM weight after ``progress`` epochs: linear from 0 to ``beta`` over ``warmup`` epochs.

    Args:
        beta: the full SIM weight.
        warmup: warm-up length in epochs (<= 0: ``beta`` from the start).
        progress: epochs done, fractional within an epoch (``epoch + batch / batches``).
    """
    if warmup <= 0:
        return float(beta)
    return float(beta) * min(1.0, max(0.0, progress) / warmup)


def check_backbone(name: str) -> None:
    """Raise the registry's :class:`ConfigError` (listing valid names) for an unknown backbone."""
    from histomag.backbones import BACKBONES, TIMM_PREFIX

    if not name.startswith(TIMM_PREFIX):
        BACKBONES.get(name)


# ----- the task ---------------------------------------------------------------------------------
class DMSLTask(L.LightningModule):
    """MultiMagNet + DMSLLoss + accuracy/F1 metrics, optimised with Adam.

    Batches are ``(list of (B, 3, H_m, W_m), labels (B,), indices (B,))`` as
    :class:`~histomag.data.tuples.TupleDataset` yields them; with ``features_input`` set, the
    first item holds the branches' cached feature maps instead
    (:class:`~histomag.dmsl.features.FeatureTupleDataset`) and the encoders are skipped.

    Args:
        config: the run's :class:`DMSLConfig` (or its dict).
        class_names: class names in index order (at least two).
        weights: override of ``config.weights`` (``None`` when loading a checkpoint, so the
            pretrained file is not needed again).
    """

    def __init__(self, config: DMSLConfig | dict[str, Any], class_names: Sequence[str],
                 weights: str | None = "config") -> None:
        super().__init__()
        from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

        self.config = config if isinstance(config, DMSLConfig) else DMSLConfig.from_dict(config)
        self.class_names = [str(c) for c in class_names]
        self.save_hyperparameters({"config": self.config.to_dict(), "class_names": self.class_names})
        c = self.config
        self.model = MultiMagNet(c.backbone, len(self.class_names), c.magnifications, mode=c.mode,  # type: ignore[arg-type]
                                 shared_backbone=c.shared_backbone, fusion=c.fusion, dropout=c.dropout,  # type: ignore[arg-type]
                                 weights=c.weights if weights == "config" else weights,
                                 freeze_backbone=c.freeze_backbone)
        self.features_input = False
        self.loss = DMSLLoss.for_mode(c.mode, alpha=c.alpha, beta=c.beta, sim_form=c.sim_form, branch_ce=c.branch_ce)
        n = len(self.class_names)
        self.train_acc = MulticlassAccuracy(n, average="micro")
        self.val_acc = MulticlassAccuracy(n, average="micro")
        self.val_f1 = MulticlassF1Score(n, average="macro")
        # each branch's own head on its own (diagnosis: does a branch go lazy inside the fused model?)
        n_heads = len(self.model.heads) if self.model.spec.fuses_branches else 0
        self.val_branch_acc = torch.nn.ModuleList([MulticlassAccuracy(n, average="micro") for _ in range(n_heads)])

    @property
    def input_mean(self) -> tuple[float, float, float]:
        return self.model.branches[0].input_mean

    @property
    def input_std(self) -> tuple[float, float, float]:
        return self.model.branches[0].input_std

    def forward(self, xs: Sequence[Tensor], *, features: bool = False) -> dict[str, Any]:
        return self.model(xs, features=features)

    def _train_beta(self, batch_idx: int) -> float:
        """The SIM weight of a training batch (warm-up over ``config.sim_warmup`` epochs)."""
        trainer = self._trainer
        if trainer is None or self.config.sim_warmup <= 0:
            return self.loss.beta
        batches = trainer.num_training_batches
        frac = batch_idx / batches if isinstance(batches, int) and batches > 0 else 0.0
        return sim_weight(self.loss.beta, self.config.sim_warmup, self.current_epoch + frac)

    def _step(self, batch: Any, stage: str, batch_idx: int = 0) -> Tensor:
        xs, y, _ = batch
        out = self.model(xs, features=self.features_input)
        beta = self._train_beta(batch_idx) if stage == "train" else self.loss.beta
        total, ce, sim = self.loss(out, y, beta=beta)
        bs = int(y.shape[0])
        preds = out["probs"].argmax(dim=1)
        on_step = stage == "train"
        self.log(f"{stage}/loss", total, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=bs,
                 sync_dist=stage != "train")
        self.log(f"{stage}/ce", ce, on_step=False, on_epoch=True, batch_size=bs, sync_dist=stage != "train")
        if self.loss.use_sim:
            self.log(f"{stage}/sim", sim, on_step=False, on_epoch=True, batch_size=bs, sync_dist=stage != "train")
            if stage == "train":
                self.log("train/beta", beta, on_step=False, on_epoch=True, batch_size=bs)
        if stage == "train":
            self.train_acc(preds, y)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=bs)
        else:
            self.val_acc(preds, y)
            self.val_f1(preds, y)
            self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=bs)
            self.log("val/f1", self.val_f1, on_epoch=True, batch_size=bs)
            for m, (metric, logits) in enumerate(zip(self.val_branch_acc, out["logits"])):
                metric(logits.argmax(dim=1), y)
                self.log(f"val/acc_branch{m}", metric, on_epoch=True, batch_size=bs)
        if stage == "train" and self.model.fusion == "learned":
            for m, w in enumerate(self.model.fusion_weights.detach()):
                self.log(f"train/fusion_w{m}", w, on_step=False, on_epoch=True, batch_size=bs)
        return total

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.config.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["histomag"] = {"model_type": MODEL_TYPE, "config": self.config.to_dict(),
                                  "class_names": self.class_names}


# ----- data -------------------------------------------------------------------------------------
class TupleDataModule(L.LightningDataModule):
    """Training and validation tuple datasets (already split and transformed) as loaders."""

    def __init__(self, train_set: Dataset, val_set: Dataset | None, *, batch_size: int, num_workers: int,
                 seed: int = 0) -> None:
        super().__init__()
        self.train_set, self.val_set = train_set, val_set
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, self.batch_size, shuffle=True, num_workers=self.num_workers,
                           seed=self.seed)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return make_loader(self.val_set, self.batch_size, shuffle=False, num_workers=self.num_workers)


# ----- fitting ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitResult:
    """What :func:`fit_fold` leaves behind."""

    best_checkpoint: Path
    last_checkpoint: Path
    epochs_completed: int
    global_step: int
    best_score: float | None
    is_global_zero: bool


def _loggers(out_dir: Path) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(out_dir, name="logs")]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return loggers
    from lightning.pytorch.loggers import TensorBoardLogger

    loggers.append(TensorBoardLogger(out_dir, name="tb"))
    return loggers


def trainer_kwargs(config: DMSLConfig) -> dict[str, Any]:
    """Lightning Trainer arguments for a config (precision, devices, strategy, limits)."""
    kw: dict[str, Any] = dict(accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
                              strategy=config.strategy, precision=default_precision(config.precision, config.accelerator),
                              max_epochs=config.epochs, enable_model_summary=False, log_every_n_steps=1)
    if config.max_time:
        kw["max_time"] = config.max_time
    return kw


def fit_fold(config: DMSLConfig, train_set: Dataset, val_set: Dataset | None, out_dir: str | Path, *,
             class_names: Sequence[str], resume: bool = False, progress: bool = True, seed: int | None = None,
             callbacks: Sequence[Any] = (), features: Any = None) -> FitResult:
    """Train one model with Lightning; checkpoints and logs go to ``out_dir``.

    Args:
        config: run settings.
        train_set, val_set: transformed tuple datasets (``val_set`` None: early stopping and the
            best checkpoint follow the training loss).
        out_dir: fold folder (``checkpoints/``, ``logs/``).
        class_names: class names in index order.
        resume: continue from ``out_dir/checkpoints/last.ckpt`` (its epoch and global step).
        progress: show a progress bar (Lightning's info messages also need INFO logging, e.g. -v).
        seed: seed for initialisation and shuffling (default ``config.seed``).
        callbacks: extra Lightning callbacks.
        features: a :class:`~histomag.dmsl.features.FeatureStore` (frozen encoders): train on the
            datasets' cached feature maps, filling the cache first where it lacks them.

    Returns:
        Paths of the best and last checkpoints and where training stopped.
    """
    from lightning.pytorch.callbacks import EarlyStopping, RichProgressBar

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    has_val = val_set is not None and len(val_set) > 0  # type: ignore[arg-type]
    monitor = monitor_key(config, has_val)
    seed = config.seed if seed is None else seed
    with lightning_quiet(progress and log.isEnabledFor(logging.INFO)):  # Lightning's banners only with -v
        L.seed_everything(seed, workers=True, verbose=False)
        task = DMSLTask(config, class_names)
        if features is not None:
            train_set = features.dataset(task.model, train_set)
            val_set = features.dataset(task.model, val_set) if has_val else None
            task.features_input = True
        data = TupleDataModule(train_set, val_set if has_val else None, batch_size=config.batch_size,
                               num_workers=config.num_workers, seed=seed)
        checkpoint, latest = checkpoint_callbacks(ckpt_dir, monitor)
        cbs: list[Any] = [checkpoint, latest, EarlyStopping(monitor=monitor, mode="min", patience=config.patience),
                          *callbacks]
        if progress:
            cbs.append(RichProgressBar(console_kwargs={"stderr": True}))
        trainer = L.Trainer(**trainer_kwargs(config), default_root_dir=out_dir, callbacks=cbs,
                            logger=_loggers(out_dir), enable_progress_bar=progress,
                            num_sanity_val_steps=0, plugins=checkpoint_plugins())
        trainer.fit(task, datamodule=data, ckpt_path=last if resume and last.is_file() else None)
    best = ensure_best(ckpt_dir) if trainer.is_global_zero else ckpt_dir / "best.ckpt"
    score = checkpoint.best_model_score
    return FitResult(best, last, int(trainer.current_epoch), int(trainer.global_step),
                     None if score is None else float(score), bool(trainer.is_global_zero))


# ----- checkpoints and inference ----------------------------------------------------------------
def load_task(path: str | Path, map_location: str | torch.device = "cpu") -> DMSLTask:
    """Load a DMSL checkpoint written by :func:`fit_fold` (eval mode, pretrained file not needed).

    Raises:
        CheckpointError: missing or unreadable file, another model type, or weights that do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; make it with: {DMSL_TRAIN_HINT}")
    ckpt, meta = read_checkpoint(path, map_location)
    if meta is None or meta.get("model_type") != MODEL_TYPE:
        kind = meta.get("model_type") if meta else "unknown"
        raise CheckpointError(f"{path} is not a DMSL checkpoint (model type {kind}); use one written by: {DMSL_TRAIN_HINT}")
    try:  # the stored config, classes and weights come from the file: a damaged one fails in one line
        task = DMSLTask(meta["config"], meta["class_names"], weights=None)
        result = task.load_state_dict(ckpt.get("state_dict", {}), strict=False)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        first = ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:160]
        raise CheckpointError(f"{path} holds a damaged DMSL model ({type(exc).__name__}: {first}); "
                              f"use one written by: {DMSL_TRAIN_HINT}") from None
    if result.missing_keys or result.unexpected_keys:
        bad = (result.missing_keys + result.unexpected_keys)[:3]
        raise CheckpointError(f"{path} does not fit its own config ({len(result.missing_keys)} missing, "
                              f"{len(result.unexpected_keys)} unexpected keys, e.g. {', '.join(bad)})")
    return task.to(map_location).eval()


@torch.no_grad()
def predict_probs(models: Sequence[torch.nn.Module], dataset: Dataset, *, batch_size: int = 32,
                  num_workers: int = 0, device: str | torch.device | None = None,
                  progress: bool = False, branches: bool = False) -> Any:
    """Class probabilities of every tuple, averaged over ``models`` (e.g. the folds' models).

    Args:
        models: :class:`DMSLTask` or :class:`MultiMagNet` modules (put in eval mode here).
        dataset: a tuple dataset with the evaluation transform, or a
            :class:`~histomag.dmsl.features.FeatureTupleDataset` of the models' own encoders.
        batch_size, num_workers: DataLoader settings.
        device: default CUDA when available, else CPU.
        progress: show a progress bar.
        branches: also return each head's own probabilities (the softmax of its logits).

    Returns:
        ``(len(dataset), n_classes)`` float array, in dataset order; with ``branches``, the pair
        ``(that array, (n_heads, len(dataset), n_classes) array)``.
    """
    from histomag.progress import progress_bar

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    nets = [m.to(device).eval() for m in models]
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers)
    cached = bool(getattr(dataset, "yields_features", False))  # the encoders' maps, not images
    out: np.ndarray | None = None
    heads: np.ndarray | None = None
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()
    with progress_bar(progress) as bar:
        task = bar.add_task("predicting", total=len(dataset)) if bar else None  # type: ignore[arg-type]
        for xs, _, idx in loader:
            xs = [x.to(device, non_blocking=True) for x in xs]
            with autocast:
                outs = [net(xs, features=cached) if cached else net(xs) for net in nets]
            probs = torch.stack([o["probs"].float() for o in outs]).mean(dim=0)
            if out is None:
                out = np.zeros((len(dataset), probs.shape[1]), dtype=np.float64)  # type: ignore[arg-type]
                if branches:
                    heads = np.zeros((len(outs[0]["logits"]), len(dataset), probs.shape[1]))  # type: ignore[arg-type]
            out[idx.numpy()] = probs.cpu().double().numpy()
            if branches:
                per_head = torch.stack([torch.stack([torch.softmax(lg.float(), dim=1) for lg in o["logits"]])
                                        for o in outs]).mean(dim=0)
                heads[:, idx.numpy()] = per_head.cpu().double().numpy()  # type: ignore[index]
            if bar:
                bar.advance(task, len(idx))  # type: ignore[arg-type]
    if out is None:
        n = len(getattr(nets[0], "class_names", [])) or getattr(nets[0], "n_classes", 0)
        out, heads = np.zeros((0, n)), np.zeros((0, 0, n))
    return (out, heads) if branches else out
