"""The similarity (SIM) module of DMSL and the combined DMSL training loss.

SIM (Diao et al., IEEE JBHI 2023, Eq. (2)) pulls the feature maps of the magnification branches
towards the same spatial evidence: each branch's map is reduced to its channel-wise maximum at
every location, and the per-location maxima of every pair of branches are compared.

Losses live outside models (see DESIGN.md): a task combines :class:`~histomag.models.dmsl.MultiMagNet`
with :class:`DMSLLoss`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from histomag.errors import ConfigError

SimForm = Literal["paper", "l1"]
SIM_FORMS: tuple[str, ...] = ("paper", "l1")
SIM_MODES: tuple[str, ...] = ("sim",)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def channel_max_maps(features: Sequence[Tensor], pool_size: int | tuple[int, int] | None = None) -> list[Tensor]:
    """Bring feature maps to one spatial size and take the maximum over channels.

    Args:
        features: ``(B, C_m, h_m, w_m)`` maps, one per magnification; channel counts may differ.
        pool_size: target ``h x w``; default: the smallest height and the smallest width among
            the maps. Maps of another size are adaptively average-pooled to it.

    Returns:
        One ``(B, h * w)`` tensor per map: ``max_C`` at every location, flattened.
    """
    if pool_size is None:
        size = (min(f.shape[-2] for f in features), min(f.shape[-1] for f in features))
    else:
        size = _pair(pool_size)
    out = []
    for f in features:
        if f.ndim != 4:
            raise ConfigError(f"SIM needs (B, C, h, w) feature maps, got shape {tuple(f.shape)}")
        if tuple(f.shape[-2:]) != size:
            f = F.adaptive_avg_pool2d(f, size)
        out.append(f.amax(dim=1).flatten(1))
    return out


class SimilarityLoss(nn.Module):
    """Similarity loss between the feature maps of M >= 2 magnification branches.

    Each map is pooled to a common ``h x w`` (adaptive average pooling to the smallest size
    among the maps, or ``pool_size``) and reduced to ``m = max over channels`` at each of its
    ``k = h * w`` locations. For every pair of branches ``i < j``:

    - ``form="paper"`` — Eq. (2) as printed: ``|sum_k (m_ik - m_jk)| / k``.
    - ``form="l1"`` (default) — per-location L1: ``sum_k |m_ik - m_jk| / k``.

    Both are divided by ``k`` (a mean over locations) so the loss scale does not depend on the
    map size, then averaged over the ``M (M - 1) / 2`` pairs and reduced over the batch.

    The default is ``"l1"`` because Eq. (2) as printed only compares the *sums* of the two
    maps: two maps with the same total but a different spatial layout score zero, so it does
    not enforce that the branches attend to the same places. ``"paper"`` is kept for
    reproducing the published formula. Both are zero for identical maps and symmetric.

    Args:
        form: ``"l1"`` or ``"paper"``.
        pool_size: common spatial size (int or ``(h, w)``); default the smallest among inputs.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample ``(B,)``) over the batch.
    """

    def __init__(
        self,
        form: SimForm = "l1",
        pool_size: int | tuple[int, int] | None = None,
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> None:
        super().__init__()
        if form not in SIM_FORMS:
            raise ConfigError(f"unknown SIM form {form!r}; valid: {', '.join(SIM_FORMS)}")
        if reduction not in ("mean", "sum", "none"):
            raise ConfigError(f"unknown reduction {reduction!r}; valid: mean, sum, none")
        if pool_size is not None and min(_pair(pool_size)) < 1:
            raise ConfigError(f"pool_size must be >= 1, got {pool_size!r}")
        self.form = form
        self.pool_size = pool_size
        self.reduction = reduction

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """SIM of a list of per-magnification feature maps.

        Args:
            features: M >= 2 tensors ``(B, C_m, h_m, w_m)`` with the same batch size.

        Returns:
            A scalar (``mean``/``sum``) or a ``(B,)`` tensor (``none``).

        Raises:
            ConfigError: fewer than two maps, or batch sizes differ.
        """
        if len(features) < 2:
            raise ConfigError(f"SIM compares at least two magnifications, got {len(features)} feature map(s)")
        if len({f.shape[0] for f in features}) != 1:
            raise ConfigError(f"SIM feature maps have different batch sizes: {[f.shape[0] for f in features]}")
        maxima = channel_max_maps(features, self.pool_size)
        per_pair = []
        for i in range(len(maxima)):
            for j in range(i + 1, len(maxima)):
                diff = maxima[i] - maxima[j]
                if self.form == "paper":
                    per_pair.append(diff.mean(dim=1).abs())
                else:
                    per_pair.append(diff.abs().mean(dim=1))
        per_sample = torch.stack(per_pair).mean(dim=0)
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample


class DMSLLoss(nn.Module):
    """DMSL objective: ``alpha * CE(fused prediction) + beta * SIM(feature maps)``.

    CE is the negative log-likelihood of the fused log-probabilities that
    :class:`~histomag.models.dmsl.MultiMagNet` returns (``"log_probs"``), clamped below at
    ``log(eps)`` so a confidently wrong sample cannot give an infinite loss. Without SIM
    (``use_sim=False``: the ``mm``, ``single`` and ``mscn`` baselines) the total is
    ``alpha * CE`` — the same CE scale as DMSL, so an ablation changes only the SIM term —
    and ``sim`` is returned as a zero tensor.

    Args:
        alpha: weight of the cross-entropy term.
        beta: weight of the SIM term.
        sim_form: ``"l1"`` or ``"paper"`` (see :class:`SimilarityLoss`).
        use_sim: add SIM; use :meth:`for_mode` to set it from a model's mode.
        pool_size: passed to :class:`SimilarityLoss`.
        eps: probability floor for the NLL.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 0.5,
        sim_form: SimForm = "l1",
        *,
        use_sim: bool = True,
        pool_size: int | tuple[int, int] | None = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ConfigError(f"DMSL loss weights must be >= 0, got alpha={alpha}, beta={beta}")
        if not 0 < eps < 1:
            raise ConfigError(f"eps must be in (0, 1), got {eps}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.use_sim = bool(use_sim)
        self.eps = float(eps)
        self.sim = SimilarityLoss(form=sim_form, pool_size=pool_size)

    @classmethod
    def for_mode(cls, mode: str, **kwargs: object) -> DMSLLoss:
        """The loss for a :class:`~histomag.models.dmsl.MultiMagNet` mode (SIM only for ``"sim"``)."""
        return cls(use_sim=mode in SIM_MODES, **kwargs)  # type: ignore[arg-type]

    def forward(self, outputs: Mapping[str, object], target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Loss of one batch.

        Args:
            outputs: the model's output dict; needs ``"log_probs"`` ``(B, n_classes)`` and, when
                SIM is used, ``"feature_maps"`` (list of ``(B, C, h, w)``).
            target: class indices ``(B,)``.

        Returns:
            ``(total, ce, sim)`` scalars; ``sim`` is a zero tensor without SIM.
        """
        log_probs = outputs.get("log_probs")
        if not isinstance(log_probs, Tensor):
            raise ConfigError("DMSLLoss needs the model output dict with 'log_probs'")
        ce = F.nll_loss(log_probs.clamp_min(math.log(self.eps)), target)
        if not self.use_sim:
            return self.alpha * ce, ce, torch.zeros((), dtype=ce.dtype, device=ce.device)
        feature_maps = outputs.get("feature_maps")
        if not isinstance(feature_maps, Sequence):
            raise ConfigError("DMSLLoss with SIM needs the model output dict with 'feature_maps'")
        sim = self.sim(feature_maps)
        return self.alpha * ce + self.beta * sim, ce, sim
