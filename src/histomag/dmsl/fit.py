"""DMSL training with PyTorch Lightning: config, task, data loading, one fold's fit, checkpoints.

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

Cross-validation and the run folder are in :mod:`histomag.dmsl.cv`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from histomag.errors import CheckpointError, ConfigError
from histomag.dmsl.network import FUSIONS, MultiMagNet
from histomag.dmsl.modes import ModeSpec, get_mode
from histomag.dmsl.similarity import DEFAULT_BETA, DEFAULT_SIM_FORM, SIM_FORMS, DMSLLoss
from histomag.dmsl.runfolder import MODEL_TYPE, DMSL_TRAIN_HINT
from histomag.fitloop import (
    checkpoint_callbacks,
    default_precision,
    ensure_best,
    lightning_quiet,
    make_loader,
    read_checkpoint,
)

log = logging.getLogger(__name__)

#: config fields that may change when a run is resumed (they do not change what is learned)
#: what early stopping and the best checkpoint may follow (see DMSLConfig.select_on)
SELECT_ON = ("loss", "ce")
#: default SIM warm-up in epochs (chosen by measurement, docs/dmsl.md)
DEFAULT_SIM_WARMUP = 2
RUNTIME_FIELDS = ("epochs", "patience", "num_workers", "devices", "num_nodes", "strategy", "accelerator",
                  "precision", "max_time")


@dataclass(frozen=True)
class DMSLConfig:
    """Everything that defines a DMSL (or baseline) training run.

    Attributes:
        mode: ``sim`` (DMSL), ``mm``, ``single`` or ``mscn``.
        backbone: backbone name (``inception_v3`` in the paper; ``tiny`` for CPU tests).
        weights: ``"none"`` (random init), ``"imagenet"`` (local torchvision cache) or a file.
        magnifications: one per branch, in input order (exactly one for ``single``).
        batch_size, lr: Adam's batch size and learning rate (paper: 32, 1e-3).
        alpha, beta: weights of CE and SIM (paper: 0.5, 0.5 with its raw SIM; default 0.5, 0.1).
        sim_form: ``"dist"`` (default), ``"corr"``, ``"l1"`` or ``"paper"`` (see
            :class:`~histomag.dmsl.similarity.SimilarityLoss`).
        sim_warmup: epochs over which the SIM weight rises linearly from 0 to ``beta`` (per
            batch); 0: full ``beta`` from the start (the paper). Validation always uses ``beta``,
            so the monitored validation loss means the same thing in every epoch.
        select_on: what early stopping and the best checkpoint minimise: ``"loss"`` (the
            training objective, ``alpha * CE + beta * SIM``) or ``"ce"`` (the cross-entropy
            alone); on the validation patients, or on the training tuples without them.
        epochs: maximum epochs per fold; patience: early-stopping patience in epochs.
        folds: number of patient-grouped cross-validation folds.
        val_fraction: share of a fold's training patients held out for early stopping.
        train_fraction: share of the training tuples kept (the paper's data-volume experiment).
        seed: seed of splits, subsampling, initialisation and augmentation.
        num_workers: DataLoader worker processes.
        devices, num_nodes, strategy, accelerator: passed to ``lightning.Trainer``.
        precision: Lightning precision; None: ``16-mixed`` on a GPU, else ``32-true``.
        shared_backbone, fusion, dropout: :class:`~histomag.dmsl.network.MultiMagNet` options.
        augment: flips, 90° rotations, colour jitter (identical for a tuple's members).
        max_time: per-fold wall-clock limit, ``"DD:HH:MM:SS"``, or None.
        max_tuples: at most this many tuples per slide (seeded choice), or None.
    """

    mode: str = "sim"
    backbone: str = "inception_v3"
    weights: str = "none"
    magnifications: tuple[float, ...] = (40.0, 20.0)
    batch_size: int = 32
    lr: float = 1e-3
    alpha: float = 0.5
    beta: float = DEFAULT_BETA
    sim_form: str = DEFAULT_SIM_FORM
    sim_warmup: int = DEFAULT_SIM_WARMUP
    select_on: str = "loss"
    epochs: int = 30
    patience: int = 5
    folds: int = 5
    val_fraction: float = 0.2
    train_fraction: float = 1.0
    seed: int = 0
    num_workers: int = 0
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    accelerator: str = "auto"
    precision: str | None = None
    shared_backbone: bool = False
    fusion: str = "equal"
    dropout: float = 0.0
    augment: bool = True
    max_time: str | None = None
    max_tuples: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "magnifications", tuple(float(m) for m in self.magnifications))
        spec = get_mode(self.mode)  # ConfigError listing the valid modes
        if self.sim_form not in SIM_FORMS:
            raise ConfigError(f"unknown SIM form {self.sim_form!r}; valid: {', '.join(SIM_FORMS)}")
        if self.select_on not in SELECT_ON:
            raise ConfigError(f"unknown select_on {self.select_on!r}; valid: {', '.join(SELECT_ON)}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {self.fusion!r}; valid: {', '.join(FUSIONS)}")
        n = len(self.magnifications)
        if spec.single and n != 1:
            raise ConfigError(f"mode={self.mode} takes one magnification, got magnifications=({_mags(self.magnifications)}); "
                              "e.g. magnifications=(40,)")
        if not spec.single and n < 2:
            raise ConfigError(f"mode={self.mode} needs at least two magnifications, e.g. magnifications=(40, 20)")
        checks = [(self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
                  (self.lr > 0, f"lr={self.lr} must be > 0"),
                  (self.alpha >= 0 and self.beta >= 0, f"alpha {self.alpha} and beta {self.beta} must be >= 0"),
                  (self.sim_warmup >= 0, f"sim_warmup={self.sim_warmup} must be >= 0 epochs"),
                  (self.epochs >= 1, f"epochs={self.epochs} must be >= 1"),
                  (self.patience >= 1, f"patience={self.patience} must be >= 1"),
                  (self.folds >= 1, f"folds={self.folds} must be >= 1 (1: one final model on all the data)"),
                  (0 < self.val_fraction < 1, f"val_fraction={self.val_fraction} must be in (0, 1)"),
                  (0 < self.train_fraction <= 1, f"train_fraction={self.train_fraction} must be in (0, 1]"),
                  (self.num_workers >= 0, f"num_workers={self.num_workers} must be >= 0"),
                  (self.num_nodes >= 1, f"num_nodes={self.num_nodes} must be >= 1"),
                  (0 <= self.dropout < 1, f"dropout {self.dropout} must be in [0, 1)"),
                  (self.max_tuples is None or self.max_tuples >= 1, f"max_tuples={self.max_tuples} must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def spec(self) -> ModeSpec:
        """The registered :class:`~histomag.dmsl.modes.ModeSpec` of ``mode``."""
        return get_mode(self.mode)

    def replace(self, **changes: Any) -> DMSLConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["magnifications"] = list(self.magnifications)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DMSLConfig:
        """Build from :meth:`to_dict` output, ignoring unknown keys.

        A stored config without ``sim_warmup`` or ``select_on`` (written before they existed)
        trained without a warm-up and selected on the loss, so it reads so, not as today's defaults.
        """
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs.setdefault("sim_warmup", 0)
        kwargs.setdefault("select_on", "loss")
        return cls(**kwargs)


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


def _mags(mags: Sequence[float]) -> str:
    return ",".join(f"{m:g}" for m in mags)


def check_backbone(name: str) -> None:
    """Raise the registry's :class:`ConfigError` (listing valid names) for an unknown backbone."""
    from histomag.backbones import BACKBONES, TIMM_PREFIX

    if not name.startswith(TIMM_PREFIX):
        BACKBONES.get(name)


# ----- the task ---------------------------------------------------------------------------------
class DMSLTask(L.LightningModule):
    """MultiMagNet + DMSLLoss + accuracy/F1 metrics, optimised with Adam.

    Batches are ``(list of (B, 3, H_m, W_m), labels (B,), indices (B,))`` as
    :class:`~histomag.data.tuples.TupleDataset` yields them.

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
                                 weights=c.weights if weights == "config" else weights)
        self.loss = DMSLLoss.for_mode(c.mode, alpha=c.alpha, beta=c.beta, sim_form=c.sim_form)
        n = len(self.class_names)
        self.train_acc = MulticlassAccuracy(n, average="micro")
        self.val_acc = MulticlassAccuracy(n, average="micro")
        self.val_f1 = MulticlassF1Score(n, average="macro")

    @property
    def input_mean(self) -> tuple[float, float, float]:
        return self.model.branches[0].input_mean

    @property
    def input_std(self) -> tuple[float, float, float]:
        return self.model.branches[0].input_std

    def forward(self, xs: Sequence[Tensor]) -> dict[str, Any]:
        return self.model(xs)

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
        out = self.model(xs)
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
        return total

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.config.lr)

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
             callbacks: Sequence[Any] = ()) -> FitResult:
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
        data = TupleDataModule(train_set, val_set if has_val else None, batch_size=config.batch_size,
                               num_workers=config.num_workers, seed=seed)
        checkpoint, latest = checkpoint_callbacks(ckpt_dir, monitor)
        cbs: list[Any] = [checkpoint, latest, EarlyStopping(monitor=monitor, mode="min", patience=config.patience),
                          *callbacks]
        if progress:
            cbs.append(RichProgressBar(console_kwargs={"stderr": True}))
        trainer = L.Trainer(**trainer_kwargs(config), default_root_dir=out_dir, callbacks=cbs,
                            logger=_loggers(out_dir), enable_progress_bar=progress,
                            num_sanity_val_steps=0)
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
    task = DMSLTask(meta["config"], meta["class_names"], weights=None)
    result = task.load_state_dict(ckpt.get("state_dict", {}), strict=False)
    if result.missing_keys or result.unexpected_keys:
        bad = (result.missing_keys + result.unexpected_keys)[:3]
        raise CheckpointError(f"{path} does not fit its own config ({len(result.missing_keys)} missing, "
                              f"{len(result.unexpected_keys)} unexpected keys, e.g. {', '.join(bad)})")
    return task.to(map_location).eval()


@torch.no_grad()
def predict_probs(models: Sequence[torch.nn.Module], dataset: Dataset, *, batch_size: int = 32,
                  num_workers: int = 0, device: str | torch.device | None = None,
                  progress: bool = False) -> np.ndarray:
    """Class probabilities of every tuple, averaged over ``models`` (e.g. the folds' models).

    Args:
        models: :class:`DMSLTask` or :class:`MultiMagNet` modules (put in eval mode here).
        dataset: a tuple dataset with the evaluation transform.
        batch_size, num_workers: DataLoader settings.
        device: default CUDA when available, else CPU.
        progress: show a progress bar.

    Returns:
        ``(len(dataset), n_classes)`` float array, in dataset order.
    """
    from histomag.progress import progress_bar

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    nets = [m.to(device).eval() for m in models]
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers)
    out: np.ndarray | None = None
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()
    with progress_bar(progress) as bar:
        task = bar.add_task("predicting", total=len(dataset)) if bar else None  # type: ignore[arg-type]
        for xs, _, idx in loader:
            xs = [x.to(device, non_blocking=True) for x in xs]
            with autocast:
                probs = torch.stack([net(xs)["probs"].float() for net in nets]).mean(dim=0)
            if out is None:
                out = np.zeros((len(dataset), probs.shape[1]), dtype=np.float64)  # type: ignore[arg-type]
            out[idx.numpy()] = probs.cpu().double().numpy()
            if bar:
                bar.advance(task, len(idx))  # type: ignore[arg-type]
    if out is None:
        n = len(getattr(nets[0], "class_names", [])) or getattr(nets[0], "n_classes", 0)
        return np.zeros((0, n))
    return out
