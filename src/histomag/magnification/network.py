"""Magnification recovery: the Hagnifinder regressor with its Adaptive Scaling Module, and a classifier baseline.

Hagnifinder (Zhang et al., J Pathol Inform 2023) regresses the objective power of a histology
image from its pixels: CNN backbone -> global average pooling -> FC ``C->200`` -> FC ``200->20``
-> Adaptive Scaling Module (ASM) -> tanh -> FC ``20->1``. The ASM rescales the 20 features so
that the tanh works in its sensitive range: with ``X = max|x|`` over the batch and
``sigma^2 = var(x / X)``, ``y = x * sqrt(sigma_hat^2 / sigma^2) / X`` with ``sigma_hat^2 = 2.2``.

Since ``var(x / X) = var(x) / X^2`` the formula is ``y = x * sigma_hat / std(x)``: one scalar
per batch, no centring. The authors' code computes the statistics with ``.item()`` (constants
for autograd) and, for inference, averages the scale factor over the training set and applies it
as a fixed constant. :class:`AdaptiveScaling` does the same the way BatchNorm does it: a batch
scale in training, a running mean of it for evaluation, so a prediction never depends on the
other images in its batch.

The classification baseline (:class:`MagnificationClassifier`, after Zaveri et al. 2020) puts a
softmax over discrete levels, by default 4x/10x/20x/40x, on the same backbone.

Example:
    >>> model = MagnificationRegressor("tiny", target="log").eval()
    >>> model.predict_magnification(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2])
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from histomag.errors import ConfigError
from histomag.backbones import Backbone, create_backbone
from histomag.magnification.runfolder import MODEL_TYPE_CLASSIFIER, MODEL_TYPE_REGRESSOR, MODEL_TYPES  # noqa: F401 - MODEL_TYPES re-exported


TARGETS: tuple[str, ...] = ("linear", "log")
HIDDEN_ACTIVATIONS: tuple[str, ...] = ("relu", "none")
DEFAULT_LEVELS: tuple[float, ...] = (4.0, 10.0, 20.0, 40.0)
#: Hagnifinder's expected variance of the scaled features
PAPER_TARGET_VARIANCE = 2.2

Target = Literal["linear", "log"]
Weights = str | os.PathLike[str] | None


class AdaptiveScaling(nn.Module):
    """Hagnifinder's Adaptive Scaling Module with BatchNorm-style running statistics.

    Training mode: the batch scale ``s = sqrt(target_variance / var(x / X)) / X`` with
    ``X = max|x|`` over every element of the batch is applied as ``y = x * s`` (so
    ``var(y) = target_variance``), and ``running_scale`` is updated with it. Evaluation mode:
    ``y = x * running_scale``; nothing depends on the batch.

    The statistics are detached: ``s`` is a constant for autograd, as in the authors' code
    (``.item()``). Two reasons. (1) At inference ``s`` is a constant (the running scale), so a
    detached ``s`` trains exactly the function that is deployed, only with the current batch's
    constant. (2) Differentiating through ``X`` and ``sigma^2`` makes ``y`` invariant to the scale
    of ``x`` (``y = x * sigma_hat / std(x)``): the gradient along ``x``'s own direction is zero,
    so nothing ties the magnitude of the preceding weights to the running scale used later, and
    the ``max`` routes a gradient to one element of the whole batch. The variance is the
    unbiased estimate over all ``B * F`` elements (``torch.var``), as in the authors' code.

    The authors' code skips the rescaling when ``1.4 < var(x / X) < 2.4``; that band cannot
    occur (``|x / X| <= 1`` gives ``var(x / X) <= n / (n - 1)``), so it is not reproduced.

    Args:
        target_variance: ``sigma_hat^2``, the variance of the scaled batch (paper: 2.2).
        momentum: weight of the new batch in the running mean (like BatchNorm, 0.1); ``None``
            for a cumulative average over all batches seen. The first batch initialises it.
        eps: variances and maxima at or below this leave the input unscaled (``s = 1/X`` or 1).

    Attributes:
        running_scale: scalar buffer used in evaluation mode (1.0 before any training batch).
        num_batches_tracked: scalar long buffer, batches seen in training mode.
    """

    running_scale: Tensor
    num_batches_tracked: Tensor

    def __init__(self, target_variance: float = PAPER_TARGET_VARIANCE, momentum: float | None = 0.1,
                 eps: float = 1e-12) -> None:
        super().__init__()
        if not target_variance > 0:
            raise ConfigError(f"target_variance must be > 0, got {target_variance}")
        if momentum is not None and not 0.0 < momentum <= 1.0:
            raise ConfigError(f"momentum must be in (0, 1] or None, got {momentum}")
        self.target_variance = float(target_variance)
        self.momentum = momentum
        self.eps = float(eps)
        self.register_buffer("running_scale", torch.tensor(1.0))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        """Forget the running scale (back to 1.0, no batches tracked)."""
        self.running_scale.fill_(1.0)
        self.num_batches_tracked.zero_()

    def batch_scale(self, x: Tensor) -> Tensor:
        """The scale factor ``s`` of one batch (a detached float32 scalar tensor)."""
        xf = x.detach().float()
        big_x = xf.abs().amax() if xf.numel() else xf.new_tensor(0.0)
        if xf.numel() < 2 or big_x <= self.eps:
            return torch.where(big_x > self.eps, 1.0 / big_x.clamp_min(self.eps), xf.new_tensor(1.0))
        var = (xf / big_x).var()
        if var <= self.eps:
            return 1.0 / big_x
        return torch.sqrt(self.target_variance / var) / big_x

    def forward(self, x: Tensor) -> Tensor:
        """Scale ``x`` (any shape) by the batch scale (training) or the running scale (eval)."""
        if not self.training:
            return x * self.running_scale.to(x.dtype)
        s = self.batch_scale(x)
        with torch.no_grad():
            self.num_batches_tracked += 1
            if self.num_batches_tracked == 1:
                self.running_scale.copy_(s)
            else:
                w = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_scale.mul_(1.0 - w).add_(s, alpha=w)
        return x * s.to(x.dtype)

    def extra_repr(self) -> str:
        return f"target_variance={self.target_variance}, momentum={self.momentum}"


def _check_range(mag_range: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in mag_range)
    if not 0 < lo < hi:
        raise ConfigError(f"mag_range must be (low, high) with 0 < low < high, got {tuple(mag_range)}")
    return lo, hi


class MagnificationRegressor(nn.Module):
    """Hagnifinder: a backbone and the FC-ASM-tanh-FC head regressing the magnification.

    The head is ``fc1: C->200``, activation (ReLU by default; the authors' code has none), ``fc2:
    200->20``, :class:`AdaptiveScaling`, ``tanh``, ``fc3: 20->1``. ``fc3``'s output is mapped
    affinely onto the target range (``center + half_range * fc3(.)``, fixed buffers from
    ``mag_range``): the same function class as the paper's plain FC, but an output that starts
    in the middle of the range and moves in magnification units at Adam's step size.

    Args:
        backbone: backbone name (see :func:`~histomag.backbones.list_backbones`).
        weights: backbone weights, as for :func:`~histomag.backbones.create_backbone`.
        target: ``"linear"`` regresses the magnification, ``"log"`` its natural logarithm.
        mag_range: ``(low, high)`` magnifications the model is meant for; predictions are clamped
            to it and it centres the output.
        hidden: widths of the two hidden FC layers (paper: 200, 20).
        hidden_activation: ``"relu"`` or ``"none"`` between ``fc1`` and ``fc2``.
        target_variance: the ASM's ``sigma_hat^2`` (paper: 2.2).
        asm_momentum: the ASM's running-mean momentum (``None``: cumulative average).
        dropout: dropout on the pooled features, in ``[0, 1)``.

    Attributes:
        backbone: the :class:`~histomag.backbones.Backbone`.
        fc1, act, fc2, asm, fc3: the head's layers in order.
        model_type: ``"magnification-regressor"``.
    """

    model_type = MODEL_TYPE_REGRESSOR
    out_center: Tensor
    out_half_range: Tensor

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        weights: Weights = None,
        target: Target = "linear",
        mag_range: Sequence[float] = (1.0, 40.0),
        hidden: Sequence[int] = (200, 20),
        hidden_activation: str = "relu",
        target_variance: float = PAPER_TARGET_VARIANCE,
        asm_momentum: float | None = 0.1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ConfigError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
        if hidden_activation not in HIDDEN_ACTIVATIONS:
            valid = ", ".join(HIDDEN_ACTIVATIONS)
            raise ConfigError(f"unknown hidden_activation {hidden_activation!r}; valid: {valid}")
        if len(hidden) != 2 or min(hidden) < 1:
            raise ConfigError(f"hidden must be two positive widths, got {tuple(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.target: str = target
        self.mag_range = _check_range(mag_range)
        self.backbone: Backbone = create_backbone(backbone, weights=weights)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(self.backbone.num_features, int(hidden[0]))
        self.act: nn.Module = nn.ReLU(inplace=True) if hidden_activation == "relu" else nn.Identity()
        self.fc2 = nn.Linear(int(hidden[0]), int(hidden[1]))
        self.asm = AdaptiveScaling(target_variance, momentum=asm_momentum)
        self.fc3 = nn.Linear(int(hidden[1]), 1)
        lo, hi = (self.to_target(torch.tensor(v, dtype=torch.float64)).item() for v in self.mag_range)
        self.register_buffer("out_center", torch.tensor((lo + hi) / 2))
        self.register_buffer("out_half_range", torch.tensor((hi - lo) / 2))

    def to_target(self, magnification: Tensor) -> Tensor:
        """Magnification -> regression target (itself, or its log)."""
        return magnification.log() if self.target == "log" else magnification

    def from_target(self, raw: Tensor) -> Tensor:
        """Regression output -> magnification (unclamped)."""
        return raw.exp() if self.target == "log" else raw

    def forward_features(self, x: Tensor) -> Tensor:
        """Backbone feature map ``(B, C, h, w)`` (for Grad-CAM)."""
        return self.backbone.forward_features(x)

    def forward_head(self, feature_map: Tensor) -> Tensor:
        """Pool a feature map and apply the head: the raw target-space output ``(B,)``."""
        h = F.adaptive_avg_pool2d(feature_map, 1).flatten(1)
        h = self.fc2(self.act(self.fc1(self.dropout(h))))
        h = torch.tanh(self.asm(h))
        return self.out_center + self.out_half_range * self.fc3(h).squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        """Raw output ``(B,)``: the magnification, or its log for ``target="log"``."""
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def predict_magnification(self, x: Tensor) -> Tensor:
        """Magnification ``(B,)`` clamped to ``mag_range``.

        Call ``.eval()`` first: in training mode the ASM and BatchNorm use batch statistics.
        """
        lo, hi = self.mag_range
        return self.from_target(self(x).float()).clamp(lo, hi)


class MagnificationClassifier(nn.Module):
    """Classification baseline: the backbone, dropout and a linear softmax over discrete levels.

    Args:
        backbone: backbone name.
        weights: backbone weights, as for :func:`~histomag.backbones.create_backbone`.
        levels: the magnification levels (classes), e.g. ``(4, 10, 20, 40)``; sorted on input.
        dropout: dropout on the pooled features, in ``[0, 1)``.

    Attributes:
        backbone: the :class:`~histomag.backbones.Backbone`.
        fc: ``nn.Linear(num_features, len(levels))``.
        levels: the sorted levels as a tuple of floats.
        model_type: ``"magnification-classifier"``.
    """

    model_type = MODEL_TYPE_CLASSIFIER
    level_values: Tensor

    def __init__(self, backbone: str = "resnet50", *, weights: Weights = None,
                 levels: Sequence[float] = DEFAULT_LEVELS, dropout: float = 0.0) -> None:
        super().__init__()
        lv = tuple(sorted(float(v) for v in levels))
        if len(lv) < 2 or lv[0] <= 0 or len(set(lv)) != len(lv):
            raise ConfigError(f"levels must be >= 2 distinct positive magnifications, got {tuple(levels)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.levels = lv
        self.backbone: Backbone = create_backbone(backbone, weights=weights)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.backbone.num_features, len(lv))
        self.register_buffer("level_values", torch.tensor(lv), persistent=False)

    def level_index(self, magnification: Tensor) -> Tensor:
        """Index of the nearest level (in log space) for each magnification."""
        d = (magnification.float().log().unsqueeze(-1) - self.level_values.log()).abs()
        return d.argmin(dim=-1)

    def forward_features(self, x: Tensor) -> Tensor:
        """Backbone feature map ``(B, C, h, w)``."""
        return self.backbone.forward_features(x)

    def forward_head(self, feature_map: Tensor) -> Tensor:
        """Pool and classify: logits ``(B, n_levels)``."""
        return self.fc(self.dropout(F.adaptive_avg_pool2d(feature_map, 1).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, n_levels)``."""
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """Softmax over the levels ``(B, n_levels)``."""
        return torch.softmax(self(x).float(), dim=1)

    @torch.no_grad()
    def predict_magnification(self, x: Tensor) -> Tensor:
        """The most probable level's magnification ``(B,)``."""
        return self.level_values[self.predict_proba(x).argmax(dim=1)]


def nearest_level(magnification: float, levels: Sequence[float]) -> float:
    """The level nearest to ``magnification`` in log space (ties go to the lower level)."""
    if magnification <= 0:
        raise ConfigError(f"magnification must be > 0, got {magnification}")
    return min(sorted(levels), key=lambda v: abs(math.log(magnification) - math.log(v)))


@torch.no_grad()
def recalibrate_statistics(model: nn.Module, batches: Iterable[Tensor], *, device: torch.device | str | None = None,
                           max_batches: int | None = None) -> int:
    """Recompute the ASM running scale and BatchNorm statistics with the current weights.

    Hagnifinder fixes the ASM scale for inference by averaging the batch scale factor of the
    final model over the training data; this does that, and the same for BatchNorm ("precise
    BN"): every :class:`AdaptiveScaling` and BatchNorm layer is reset and fed the batches in
    training mode with a cumulative average (``momentum=None``); every other layer (dropout)
    stays in evaluation mode, and no weight changes. The layers' modes and momenta are restored.

    Args:
        model: the network.
        batches: input tensors ``(B, 3, H, W)`` (training crops), or ``(inputs, targets)`` pairs.
        device: where to move the inputs (default: the model's device).
        max_batches: stop after this many batches.

    Returns:
        The number of batches used (0 leaves the statistics untouched).
    """
    layers = [m for m in model.modules() if isinstance(m, (AdaptiveScaling, nn.modules.batchnorm._BatchNorm))]
    device = device if device is not None else next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    used = 0
    try:
        model.eval()
        for batch in batches:
            if max_batches is not None and used >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if used == 0:
                for m in layers:
                    m.reset_running_stats()
                    m.momentum = None
                    m.train()
            model(x.to(device))
            used += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return used
