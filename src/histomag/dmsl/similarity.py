"""The similarity (SIM) module of DMSL and the combined DMSL training loss.

SIM (Diao et al., IEEE JBHI 2023, Eq. (2)) pulls the feature maps of the magnification branches
towards the same spatial evidence: each branch's map is reduced to its channel-wise maximum at
every location, and the per-location maxima of every pair of branches are compared.

The forms ``paper`` and ``l1`` compare the raw maxima, so a randomly initialised network can
lower them by shrinking (or flattening) its activations instead of aligning them. The forms
``corr`` and ``dist`` compare each map after per-sample standardisation (subtract its spatial
mean, divide by its spatial standard deviation): scaling or shifting a map changes nothing, so
the only way to lower them is to put the evidence in the same places.

Losses live outside models (see DESIGN.md): a task combines :class:`~histomag.dmsl.network.MultiMagNet`
with :class:`DMSLLoss`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from histomag.dmsl.config import DEFAULT_BETA, DEFAULT_SIM_FORM, SIM_FORMS, SimForm
from histomag.errors import ConfigError

#: forms that compare the spatial layout of standardised maps (need >= 2 locations)
NORMALISED_FORMS: tuple[str, ...] = ("corr", "dist")
#: floor of a map's spatial standard deviation in the normalised forms, relative to its mean
#: absolute value (keeps flat maps finite without breaking scale invariance)
STD_EPS = 1e-6
TINY = 1e-30  # keeps an all-zero map's std (and its gradient) finite


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


def standardise(maxima: Tensor, eps: float = STD_EPS) -> Tensor:
    """Per-sample z-scores of flattened maps ``(B, k)``: zero spatial mean, unit spatial std.

    Computed in float32 (also under autocast). The std is floored at ``eps`` times the map's mean
    absolute value (a floor that scales with the map, so multiplying a map by any positive
    constant leaves its z-scores exactly as they were): a flat map becomes all zeros, with a
    finite gradient.
    """
    m = maxima.float()
    centred = m - m.mean(dim=1, keepdim=True)
    floor = eps * m.abs().mean(dim=1, keepdim=True)
    return centred / (centred.pow(2).mean(dim=1, keepdim=True) + floor.pow(2) + TINY).sqrt()


def _pair_loss(form: str, a: Tensor, b: Tensor, za: Tensor | None, zb: Tensor | None) -> Tensor:
    """Per-sample ``(B,)`` SIM of two flattened channel-max maps (z-scores given for normalised forms)."""
    if form == "paper":
        return (a - b).mean(dim=1).abs()
    if form == "l1":
        return (a - b).abs().mean(dim=1)
    assert za is not None and zb is not None
    if form == "corr":
        return 1.0 - (za * zb).mean(dim=1)
    # dist: Jensen-Shannon divergence (in bits, so in [0, 1]) of the softmax distributions
    log_p, log_q = F.log_softmax(za, dim=1), F.log_softmax(zb, dim=1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(dim=1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(dim=1)
    return (0.5 * (kl_pm + kl_qm) / math.log(2.0)).clamp_min(0.0)


class SimilarityLoss(nn.Module):
    """Similarity loss between the feature maps of M >= 2 magnification branches.

    Each map is pooled to a common ``h x w`` (adaptive average pooling to the smallest size
    among the maps, or ``pool_size``) and reduced to ``m = max over channels`` at each of its
    ``k = h * w`` locations. For every pair of branches ``i < j``:

    - ``form="paper"`` — Eq. (2) as printed: ``|sum_k (m_ik - m_jk)| / k``.
    - ``form="l1"`` — per-location L1: ``sum_k |m_ik - m_jk| / k``.
    - ``form="corr"`` — ``1 - r``, with ``r`` the Pearson correlation of the two maps over the
      ``k`` locations (``mean_k z_ik z_jk`` of the per-sample z-scores); in ``[0, 2]``.
    - ``form="dist"`` (default) — each map's z-scores are turned into a spatial distribution by
      a softmax over the locations; the Jensen-Shannon divergence of the two, in bits (``[0, 1]``).

    All are means over locations, so the loss scale does not depend on the map size; they are
    averaged over the ``M (M - 1) / 2`` pairs and reduced over the batch. All are zero for
    identical maps and symmetric.

    ``"paper"`` only compares the *sums* of the two maps: two maps with the same total but a
    different spatial layout score zero. ``"l1"`` compares layouts, but both raw forms can be
    lowered by shrinking the activations of every branch, which is what a randomly initialised
    network does (``histomag demo --quick`` stayed at chance with ``"l1"``). ``"corr"`` and
    ``"dist"`` are invariant to scaling and shifting either map, so only agreeing on *where*
    the evidence is lowers them; they need at least two locations. The default ``"dist"`` was
    chosen by measurement (docs/dmsl.md).

    Args:
        form: ``"dist"``, ``"corr"``, ``"l1"`` or ``"paper"``.
        pool_size: common spatial size (int or ``(h, w)``); default the smallest among inputs.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample ``(B,)``) over the batch.
    """

    def __init__(
        self,
        form: SimForm = DEFAULT_SIM_FORM,
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
            ConfigError: fewer than two maps, batch sizes differ, or a normalised form on
                maps of a single location.
        """
        if len(features) < 2:
            raise ConfigError(f"SIM compares at least two magnifications, got {len(features)} feature map(s)")
        if len({f.shape[0] for f in features}) != 1:
            raise ConfigError(f"SIM feature maps have different batch sizes: {[f.shape[0] for f in features]}")
        maxima = channel_max_maps(features, self.pool_size)
        z: list[Tensor | None] = [None] * len(maxima)
        if self.form in NORMALISED_FORMS:
            if maxima[0].shape[1] < 2:
                raise ConfigError(f"SIM form {self.form!r} compares spatial layouts but the maps pool to a single "
                                  "location; use larger inputs, a pool_size of at least 2, or form 'l1'")
            z = [standardise(m) for m in maxima]
        per_pair = []
        for i in range(len(maxima)):
            for j in range(i + 1, len(maxima)):
                per_pair.append(_pair_loss(self.form, maxima[i], maxima[j], z[i], z[j]))
        per_sample = torch.stack(per_pair).mean(dim=0)
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample


class DMSLLoss(nn.Module):
    """DMSL objective: ``alpha * (CE(fused) + branch_ce * mean_m CE(branch m)) + beta * SIM(feature maps)``.

    CE is the negative log-likelihood of the fused log-probabilities that
    :class:`~histomag.dmsl.network.MultiMagNet` returns (``"log_probs"``), clamped below at
    ``log(eps)`` so a confidently wrong sample cannot give an infinite loss. Without SIM
    (``use_sim=False``: the ``mm``, ``single`` and ``mscn`` baselines) the total is
    ``alpha * CE`` — the same CE scale as DMSL, so an ablation changes only the SIM term —
    and ``sim`` is returned as a zero tensor. A training task may pass another ``beta`` per
    batch (a warm-up of the SIM weight).

    ``branch_ce`` > 0 adds deep supervision: each branch's own head is also trained on the label
    (the mean of the per-branch CEs). With the fused CE alone, the gradient reaching a branch is
    scaled by its share of the fused probability of the true class, so the branch that is ahead
    early takes more of the learning. docs/dmsl-fusion.md measures both: on BACH the fused CE
    alone did better (its heads are weak alone but complementary), so 0 is the default. Models
    with one head (``single``, ``mscn``) have no branch term.

    Args:
        alpha: weight of the cross-entropy term.
        beta: weight of the SIM term (the paper: 0.5 with its raw form; default 0.1).
        sim_form: ``"dist"``, ``"corr"``, ``"l1"`` or ``"paper"`` (see :class:`SimilarityLoss`).
        use_sim: add SIM; use :meth:`for_mode` to set it from a model's mode.
        pool_size: passed to :class:`SimilarityLoss`.
        eps: probability floor for the NLL.
        branch_ce: weight of the mean per-branch CE, relative to the fused CE (0: the paper's loss).
    """

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = DEFAULT_BETA,
        sim_form: SimForm = DEFAULT_SIM_FORM,
        *,
        use_sim: bool = True,
        pool_size: int | tuple[int, int] | None = None,
        eps: float = 1e-8,
        branch_ce: float = 0.0,
    ) -> None:
        super().__init__()
        if alpha < 0 or beta < 0 or branch_ce < 0:
            raise ConfigError(f"DMSL loss weights must be >= 0, got alpha={alpha}, beta={beta}, branch_ce={branch_ce}")
        self.branch_ce = float(branch_ce)
        if not 0 < eps < 1:
            raise ConfigError(f"eps must be in (0, 1), got {eps}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.use_sim = bool(use_sim)
        self.eps = float(eps)
        self.sim = SimilarityLoss(form=sim_form, pool_size=pool_size)

    @classmethod
    def for_mode(cls, mode: str, **kwargs: object) -> DMSLLoss:
        """The loss for a registered mode (SIM only where its :class:`~histomag.dmsl.modes.ModeSpec` uses it)."""
        from histomag.dmsl.modes import get_mode

        return cls(use_sim=get_mode(mode).uses_sim, **kwargs)  # type: ignore[arg-type]

    def forward(self, outputs: Mapping[str, object], target: Tensor, *,
                beta: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Loss of one batch.

        Args:
            outputs: the model's output dict; needs ``"log_probs"`` ``(B, n_classes)`` and, when
                SIM is used, ``"feature_maps"`` (list of ``(B, C, h, w)``).
            target: class indices ``(B,)``.
            beta: SIM weight for this batch instead of ``self.beta`` (e.g. during a warm-up).

        Returns:
            ``(total, ce, sim)`` scalars; ``sim`` is a zero tensor without SIM.
        """
        log_probs = outputs.get("log_probs")
        if not isinstance(log_probs, Tensor):
            raise ConfigError("DMSLLoss needs the model output dict with 'log_probs'")
        ce = F.nll_loss(log_probs.clamp_min(math.log(self.eps)), target)
        objective = ce
        logits = outputs.get("logits")
        if self.branch_ce > 0 and isinstance(logits, Sequence) and len(logits) > 1:
            branch = torch.stack([F.cross_entropy(lg, target) for lg in logits]).mean()
            objective = ce + self.branch_ce * branch
        if not self.use_sim:
            return self.alpha * objective, ce, torch.zeros((), dtype=ce.dtype, device=ce.device)
        feature_maps = outputs.get("feature_maps")
        if not isinstance(feature_maps, Sequence):
            raise ConfigError("DMSLLoss with SIM needs the model output dict with 'feature_maps'")
        sim = self.sim(feature_maps)
        weight = self.beta if beta is None else float(beta)
        return self.alpha * objective + weight * sim, ce, sim
