"""The DMSL training configuration and its defaults, stated once (no torch: the CLI and the report read it).

:class:`DMSLConfig` is everything that defines a DMSL (or baseline) training run; the SIM and
fusion choices it validates against are defined here too, and :mod:`histomag.dmsl.similarity`,
:mod:`histomag.dmsl.network` and :mod:`histomag.dmsl.fit` use them from here.

Example:
    >>> from histomag.dmsl.config import DMSLConfig
    >>> DMSLConfig.default("beta"), DMSLConfig(mode="single", magnifications=(40,)).magnifications
    (0.1, (40.0,))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from histomag.dmsl.modes import ModeSpec, get_mode
from histomag.errors import ConfigError

SimForm = Literal["paper", "l1", "corr", "dist"]
#: the SIM formulas (see :class:`~histomag.dmsl.similarity.SimilarityLoss`)
SIM_FORMS: tuple[str, ...] = ("paper", "l1", "corr", "dist")
#: chosen by measurement on ``histomag.demo.run_demo(quick=True)`` (docs/dmsl.md)
DEFAULT_SIM_FORM: SimForm = "dist"
#: default SIM weight beta (the paper's 0.5 was for its raw form; measured in docs/dmsl.md)
DEFAULT_BETA = 0.1
#: default SIM warm-up in epochs (chosen by measurement, docs/dmsl.md)
DEFAULT_SIM_WARMUP = 2
#: how the branches' class probabilities are weighted (see :class:`~histomag.dmsl.network.MultiMagNet`)
Fusion = Literal["equal", "learned"]
FUSIONS: tuple[str, ...] = ("equal", "learned")
#: what early stopping and the best checkpoint may follow (see DMSLConfig.select_on)
SELECT_ON = ("loss", "ce")
#: default weight of the per-branch CE (deep supervision), relative to the fused CE. Chosen by a criterion
#: stated before the runs (docs/dmsl-fusion.md): deep supervision lowered MM's image AUC on BACH (-0.031
#: [-0.058, -0.008], 5 folds x 3 seeds) and left the two-scale cohort unchanged, so the default stays the
#: paper's fused CE alone; deep supervision remains an option
DEFAULT_BRANCH_CE = 0.0
#: config fields that may change when a run is resumed (they do not change what is learned)
RUNTIME_FIELDS = ("epochs", "patience", "num_workers", "devices", "num_nodes", "strategy", "accelerator",
                  "precision", "max_time", "cache_features", "feature_dir")


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
        branch_ce: weight of the mean per-branch CE beside the fused CE (deep supervision: every
            branch's own head learns the label too); 0 is the paper's loss (the ``paper`` preset).
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
        freeze_backbone: keep each branch's encoder fixed (no gradient, always in eval mode, so
            BatchNorm statistics do not move); a trainable 1x1-conv projection per branch then
            feeds the heads and the SIM loss, and only it, the heads and the fusion train.
        cache_features: with ``freeze_backbone``, compute each tuple's encoder features once and
            keep them on disk (memory-mapped), so later epochs, folds and modes reuse them; needs
            ``augment=False`` (the cache holds unaugmented tuples). Same results as without it.
        feature_dir: where the feature cache lives; None: ``features/`` in the dataset folder
            (for slides, in the run folder).
    """

    mode: str = "sim"
    backbone: str = "inception_v3"
    weights: str = "none"
    magnifications: tuple[float, ...] = (40.0, 20.0)
    batch_size: int = 32
    lr: float = 1e-3
    alpha: float = 0.5
    beta: float = DEFAULT_BETA
    branch_ce: float = DEFAULT_BRANCH_CE
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
    freeze_backbone: bool = False
    cache_features: bool = False
    feature_dir: str | None = None

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name`` (the CLI reads its defaults here)."""
        return next(f.default for f in fields(cls) if f.name == name)

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
                  (self.branch_ce >= 0, f"branch_ce={self.branch_ce} must be >= 0 (0: the fused CE alone)"),
                  (self.sim_warmup >= 0, f"sim_warmup={self.sim_warmup} must be >= 0 epochs"),
                  (self.epochs >= 1, f"epochs={self.epochs} must be >= 1"),
                  (self.patience >= 1, f"patience={self.patience} must be >= 1"),
                  (self.folds >= 1, f"folds={self.folds} must be >= 1 (1: one final model on all the data)"),
                  (0 < self.val_fraction < 1, f"val_fraction={self.val_fraction} must be in (0, 1)"),
                  (0 < self.train_fraction <= 1, f"train_fraction={self.train_fraction} must be in (0, 1]"),
                  (self.num_workers >= 0, f"num_workers={self.num_workers} must be >= 0"),
                  (self.num_nodes >= 1, f"num_nodes={self.num_nodes} must be >= 1"),
                  (0 <= self.dropout < 1, f"dropout {self.dropout} must be in [0, 1)"),
                  (self.max_tuples is None or self.max_tuples >= 1, f"max_tuples={self.max_tuples} must be >= 1"),
                  (not self.cache_features or self.freeze_backbone,
                   "cache_features=True needs freeze_backbone=True (a trained encoder's features change every step)"),
                  (not self.cache_features or not self.augment,
                   "cache_features=True caches unaugmented tuples; set augment=False with it")]
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

        A stored config without ``sim_warmup``, ``select_on``, ``branch_ce`` or ``freeze_backbone``
        (written before they existed) trained without a warm-up, selected on the loss, had no branch
        CE and trained its encoders, so it reads so, not as today's defaults.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"a stored DMSL config is a {type(data).__name__}, not a mapping of fields; "
                              "use the config a run or checkpoint wrote")
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs.setdefault("sim_warmup", 0)
        kwargs.setdefault("select_on", "loss")
        kwargs.setdefault("branch_ce", 0.0)
        kwargs.setdefault("freeze_backbone", False)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:  # a damaged file's field
            first = ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:160]
            raise ConfigError(f"a stored DMSL config has a value of the wrong type ({first}); "
                              "use the config a run or checkpoint wrote") from None

    @classmethod
    def from_preset(cls, name: str, **changes: Any) -> DMSLConfig:
        """A named preset (see :data:`PRESETS`) with ``changes`` on top.

        Raises:
            ConfigError: an unknown preset name (the message lists the known ones).
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown DMSL preset {name!r}; valid: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **changes})


#: named settings: ``paper`` is Diao et al.'s form exactly (Inception-v3, 40x+20x at 600/300 px as tiled,
#: alpha = beta = 0.5 with Eq. (2) as printed, no warm-up, the fused CE alone); ``default`` is histomag's
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {"backbone": "inception_v3", "magnifications": (40.0, 20.0), "alpha": 0.5, "beta": 0.5,
              "sim_form": "paper", "sim_warmup": 0, "branch_ce": 0.0, "batch_size": 32, "lr": 1e-3},
}




def _mags(mags: Sequence[float]) -> str:
    return ",".join(f"{m:g}" for m in mags)
