"""Settings of a magnification-model run: the frozen :class:`MagnifierConfig`, named presets, the network factory.

Lightning-free, so command lines can parse and validate settings without importing it.

Example:
    >>> cfg = preset("tiny", epochs=2, target="log")
    >>> (cfg.backbone, cfg.crop, cfg.epochs)
    ('tiny', 64, 2)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from histomag.errors import ConfigError
from histomag.magnification.network import (
    DEFAULT_LEVELS,
    HIDDEN_ACTIVATIONS,
    MODEL_TYPE_CLASSIFIER,
    MODEL_TYPE_REGRESSOR,
    MODEL_TYPES,
    TARGETS,
    MagnificationClassifier,
    MagnificationRegressor,
)

CHECKPOINT_FORMAT = 1
MONITORS = ("val_loss", "val_mae")
#: config fields that define the network; a resumed run must keep them
ARCHITECTURE_FIELDS = ("model_type", "backbone", "target", "mag_range", "hidden_activation", "target_variance",
                       "levels")


@dataclass(frozen=True)
class MagnifierConfig:
    """Everything that defines a magnification-model training run (frozen; override with ``replace``).

    Attributes:
        model_type: ``"magnification-regressor"`` (Hagnifinder) or ``"magnification-classifier"``.
        backbone: backbone name (``resnet50``, ``resnet18``, ``tiny``, ``timm:NAME`` ...).
        weights: backbone init: None (random), ``"imagenet"`` (local cache only) or a state-dict path.
        target: regressor target, ``"linear"`` (magnification) or ``"log"`` (log-magnification).
        mag_range: magnifications predictions are clamped to (and the output is centred on).
        hidden_activation: regressor activation between the first two FCs (``"relu"``/``"none"``).
        target_variance: the ASM's expected variance (paper: 2.2).
        levels: classifier levels; also the levels of the 4-level comparison metrics.
        level_tolerance: classifier rows must be within this relative distance of a level
            (None: every row, labelled with its nearest level in log space).
        crop: square input crop in px (never resized).
        batch_size, lr, weight_decay: AdamW batch size, learning rate, decoupled weight decay.
        epochs: maximum number of epochs.
        patience: epochs without validation improvement before the learning rate is multiplied
            by ``lr_factor`` (ReduceLROnPlateau), down to ``min_lr``.
        huber_delta: Huber loss threshold in target units (magnification, or log-magnification).
        dropout: dropout on the pooled features.
        color_jitter: (brightness, contrast, saturation, hue) of the training colour jitter.
        monitor: validation metric for the best checkpoint and the scheduler (``val_loss``/``val_mae``).
        calibration_batches: before each validation, recompute the ASM running scale and the
            BatchNorm statistics over this many training batches with the current weights
            (:func:`~histomag.magnification.network.recalibrate_statistics`; the paper's way of fixing
            the ASM scale); 0 keeps the running averages accumulated during training.
        num_workers: DataLoader worker processes.
        seed: seed for weights, sampling and augmentation.
        max_time_minutes: stop training after this many minutes (None: no limit).
        precision: Lightning precision; None picks ``16-mixed`` on a GPU, else ``32-true``.
        devices, num_nodes, strategy: passed to ``lightning.Trainer`` (e.g. ``devices=2,
            strategy="ddp"``: two processes, on CPUs too); ``batch_size`` is per process.
        preset: name of the preset the config started from (informational).
    """

    model_type: str = MODEL_TYPE_REGRESSOR
    backbone: str = "resnet50"
    weights: str | None = None
    target: str = "linear"
    mag_range: tuple[float, float] = (1.0, 40.0)
    hidden_activation: str = "relu"
    target_variance: float = 2.2
    levels: tuple[float, ...] = DEFAULT_LEVELS
    level_tolerance: float | None = 0.02
    crop: int = 224
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-2
    epochs: int = 50
    patience: int = 5
    lr_factor: float = 0.5
    min_lr: float = 5e-6
    huber_delta: float = 1.0
    dropout: float = 0.0
    color_jitter: tuple[float, float, float, float] = (0.1, 0.1, 0.1, 0.02)
    monitor: str = "val_loss"
    calibration_batches: int = 25
    num_workers: int = 4
    seed: int = 0
    max_time_minutes: float | None = None
    precision: str | None = None
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    preset: str = "custom"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "mag_range", tuple(float(v) for v in self.mag_range))
        set_(self, "levels", tuple(sorted(float(v) for v in self.levels)))
        set_(self, "color_jitter", tuple(float(v) for v in self.color_jitter))
        if self.weights is not None:
            set_(self, "weights", str(self.weights))
        checks = [
            (self.model_type in MODEL_TYPES, f"model_type must be one of {', '.join(MODEL_TYPES)}"),
            (self.target in TARGETS, f"target must be one of {', '.join(TARGETS)}"),
            (self.hidden_activation in HIDDEN_ACTIVATIONS,
             f"hidden_activation must be one of {', '.join(HIDDEN_ACTIVATIONS)}"),
            (len(self.mag_range) == 2 and 0 < self.mag_range[0] < self.mag_range[1],
             "mag_range must be (low, high) with 0 < low < high"),
            (len(self.levels) >= 2 and self.levels[0] > 0, "levels must be >= 2 positive magnifications"),
            (self.level_tolerance is None or self.level_tolerance >= 0, "level_tolerance must be >= 0 or None"),
            (self.crop >= 16, "crop must be >= 16 px"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0 and self.min_lr >= 0, "lr must be > 0 and min_lr >= 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.patience >= 0, "patience must be >= 0"),
            (0 < self.lr_factor < 1, "lr_factor must be in (0, 1)"),
            (self.huber_delta > 0, "huber_delta must be > 0"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (len(self.color_jitter) == 4 and min(self.color_jitter) >= 0 and self.color_jitter[3] <= 0.5,
             "color_jitter must be 4 non-negative numbers (brightness, contrast, saturation, hue <= 0.5)"),
            (self.monitor in MONITORS, f"monitor must be one of {', '.join(MONITORS)}"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.calibration_batches >= 0, "calibration_batches must be >= 0"),
            (self.max_time_minutes is None or self.max_time_minutes > 0, "max_time_minutes must be > 0 or None"),
            (self.target_variance > 0, "target_variance must be > 0"),
            (isinstance(self.devices, str) or self.devices >= 1, "devices must be >= 1, 'auto' or device ids"),
            (self.num_nodes >= 1, "num_nodes must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"bad magnifier config: {message}")

    def replace(self, **overrides: Any) -> MagnifierConfig:
        """A copy with some fields changed (validated).

        Raises:
            ConfigError: unknown field name or bad value.
        """
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown magnifier config field(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(self.field_names())}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MagnifierConfig:
        """Inverse of :meth:`to_dict`; keys that are not fields (e.g. ``data_dir``) are ignored."""
        if not isinstance(data, dict):
            raise ConfigError(f"a stored magnifier config is a {type(data).__name__}, not a mapping of fields; "
                              "use the config a run or checkpoint wrote")
        names = set(cls.field_names())
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:  # a damaged file's field
            first = ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:160]
            raise ConfigError(f"a stored magnifier config has a value of the wrong type ({first}); "
                              "use the config a run or checkpoint wrote") from None

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of the config fields, in order."""
        return [f.name for f in dataclasses.fields(cls)]

    @property
    def is_classifier(self) -> bool:
        """True for the classification baseline."""
        return self.model_type == MODEL_TYPE_CLASSIFIER


#: Named starting points; ``preset(name, **overrides)`` copies one with changes.
#: ``paper``: Hagnifinder's ResNet-50 regressor on a GPU. The authors' code (hacylu/Hagnifinder)
#: has no activation between the first FCs, AdamW with lr 0.05, batch 32, Huber(delta=1) and
#: ReduceLROnPlateau(0.5, patience 6, min_lr 5e-6) for 100 epochs; lr 0.05 is kept out (too high
#: for AdamW with this head's centred output), 1e-4 with batch 64 and 50 epochs used instead.
#: ``cpu-small``: ResNet-18 on 128 px crops, 8 epochs, stopped after 28 minutes: measured ~0.075
#: CPU-s per training image (decode + augment + step), ~0.03 per validation image, so ~2 s per 100
#: images per epoch on 2 cores: 3k images (70/15/15 split) ~15 min, 5k ~24 min.
#: ``real-small``: the compact ``small`` ResNet on 128 px crops drawn online from real sources with
#: randomised acquisition (:mod:`histomag.magnification.cv`), log target; the shipped default model.
#: ``tiny``: the tiny backbone on 64 px crops, for tests and demos (seconds).
PRESETS: dict[str, MagnifierConfig] = {
    "paper": MagnifierConfig(preset="paper", backbone="resnet50", hidden_activation="none", crop=224,
                             batch_size=64, lr=1e-4, epochs=50, patience=5, num_workers=8),
    "cpu-small": MagnifierConfig(preset="cpu-small", backbone="resnet18", crop=128, batch_size=32, lr=1e-3,
                                 epochs=8, patience=2, num_workers=1, max_time_minutes=28.0),
    "real-small": MagnifierConfig(preset="real-small", backbone="small", target="log", mag_range=(1.0, 64.0),
                                  crop=128, batch_size=64, lr=2e-3, weight_decay=1e-4, epochs=4, patience=1,
                                  num_workers=1, calibration_batches=6),
    "tiny": MagnifierConfig(preset="tiny", backbone="tiny", crop=64, batch_size=16, lr=3e-3, epochs=3,
                            patience=2, num_workers=0),
}


def preset(name: str, **overrides: Any) -> MagnifierConfig:
    """A preset config with fields overridden.

    Raises:
        ConfigError: unknown preset or field.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown magnifier preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def build_magnifier(config: MagnifierConfig, *, weights: str | None | bool = True) -> nn.Module:
    """The (untrained) network a config describes.

    Args:
        config: the config.
        weights: True: ``config.weights``; otherwise this value (None: random init).
    """
    w = config.weights if weights is True else weights
    if config.is_classifier:
        return MagnificationClassifier(config.backbone, weights=w, levels=config.levels, dropout=config.dropout)
    return MagnificationRegressor(config.backbone, weights=w, target=config.target,  # type: ignore[arg-type]
                                  mag_range=config.mag_range, hidden_activation=config.hidden_activation,
                                  target_variance=config.target_variance, dropout=config.dropout)
