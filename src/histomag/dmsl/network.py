"""The multi-branch, multi-magnification network of DMSL and its baselines.

One CNN branch per magnification (Diao et al., IEEE JBHI 2023): each branch sees the same
field of view at its own magnification (inputs may have different pixel sizes, e.g. 40x at
600 px and 20x at 300 px), has its own linear head, and the class probabilities of the
branches are fused by a weighted sum. The SIM loss (:mod:`histomag.dmsl.similarity`) reaches
the per-branch feature maps through ``forward_features``; Grad-CAM reaches layers by name
through :meth:`MultiMagNet.layer_name`.

Modes (registered as :class:`~histomag.dmsl.modes.ModeSpec`; the network reads ``single``
and ``head`` from the spec):
    ``sim``: DMSL — the training loss adds SIM between branches.
    ``mm``: the same network trained without SIM (multi-magnification baseline).
    ``single``: one magnification, one backbone, one head.
    ``mscn``: multi-scale baseline — M branches on same-centre context inputs (equal pixel
    size, growing field of view); pooled features are concatenated before ONE classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from histomag.errors import ConfigError
from histomag.backbones import Backbone, create_backbone
from histomag.dmsl.config import FUSIONS, Fusion
from histomag.dmsl.modes import get_mode, mode_names



class MultiMagNet(nn.Module):
    """Multi-magnification classifier with per-branch heads and probability fusion.

    The fused prediction is ``p = sum_m w_m * softmax(head_m(pool(f_m)))`` with ``w`` equal
    (``fusion="equal"``) or ``softmax`` of a learnable vector (``fusion="learned"``, initialised
    equal). ``log_probs`` is computed as a log-sum-exp of ``log w_m + log_softmax`` so it stays
    finite where a probability underflows. In ``mscn`` mode the single head sees the
    concatenated pooled features and ``p`` is its softmax.

    Args:
        backbone: backbone name (see :func:`~histomag.backbones.list_backbones`).
        n_classes: number of classes (>= 2).
        magnifications: one objective power per branch, in input order (e.g. ``(40, 20)``);
            exactly one for ``single``, at least two otherwise.
        mode: a registered mode (``"sim"``, ``"mm"``, ``"single"``, ``"mscn"``, see the module docstring).
        shared_backbone: use one backbone (the same weights) for every magnification.
        fusion: ``"equal"`` or ``"learned"`` branch weights (``"learned"``: modes that fuse branches).
        weights: backbone weights, as for :func:`~histomag.backbones.create_backbone`.
        dropout: dropout on the pooled features before the head(s), in ``[0, 1)``.
        freeze_backbone: keep the branches' encoders fixed (``requires_grad`` False, and in eval
            mode whatever ``train()`` says, so BatchNorm statistics do not move). Each branch's
            map then goes through a trainable 1x1 conv + ReLU (``projections``) before pooling;
            the heads and the SIM loss see the projected maps, so SIM has something to align.

    Attributes:
        branches: ``nn.ModuleList`` of :class:`Backbone` (one if shared or single).
        heads: ``nn.ModuleList`` of ``nn.Linear`` (one per magnification; one for mscn).
        projections: ``nn.ModuleList`` (one per branch) of the frozen encoders' projections, or
            of identities when the encoders train.
        mode, magnifications, n_classes, shared_backbone, fusion: the constructor arguments.
    """

    def __init__(
        self,
        backbone: str,
        n_classes: int,
        magnifications: Sequence[float],
        *,
        mode: str = "sim",
        shared_backbone: bool = False,
        fusion: Fusion = "equal",
        weights: str | None = None,
        dropout: float = 0.0,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        mags = tuple(float(m) for m in magnifications)
        spec = get_mode(mode)  # ConfigError listing the valid modes
        if fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {fusion!r}; valid: {', '.join(FUSIONS)}")
        if n_classes < 2:
            raise ConfigError(f"n_classes must be >= 2, got {n_classes}")
        if any(m <= 0 for m in mags):
            raise ConfigError(f"magnifications must be > 0, got {list(mags)}")
        spec.check_magnifications(len(mags), str(list(mags)))
        if fusion == "learned" and not spec.fuses_branches:
            fusing = " and ".join(m for m in mode_names() if get_mode(m).fuses_branches)
            raise ConfigError(f"fusion 'learned' applies to modes {fusing} only (they fuse branches), not {mode!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")

        self.backbone_name = backbone
        self.n_classes = int(n_classes)
        self.magnifications = mags
        self.mode: str = mode
        self.spec = spec
        self.shared_backbone = bool(shared_backbone) or spec.single
        self.fusion: str = fusion
        n_branches = 1 if self.shared_backbone else len(mags)
        self.branches = nn.ModuleList([create_backbone(backbone, weights=weights) for _ in range(n_branches)])
        n_features = self.branches[0].num_features
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            for p in self.branches.parameters():
                p.requires_grad_(False)
            self.branches.eval()
            self.projections = nn.ModuleList([nn.Sequential(nn.Conv2d(n_features, n_features, 1), nn.ReLU())
                                              for _ in range(n_branches)])
        else:
            self.projections = nn.ModuleList([nn.Identity() for _ in range(n_branches)])
        self.dropout = nn.Dropout(dropout)
        if spec.head == "concat":
            self.heads = nn.ModuleList([nn.Linear(n_features * len(mags), n_classes)])
        else:
            self.heads = nn.ModuleList([nn.Linear(n_features, n_classes) for _ in mags])
        logits = torch.zeros(len(self.heads))
        if fusion == "learned":
            self.fusion_logits = nn.Parameter(logits)
        else:
            self.register_buffer("fusion_logits", logits, persistent=False)

    def train(self, mode: bool = True) -> MultiMagNet:
        """Set training mode; frozen encoders stay in eval mode."""
        super().train(mode)
        if self.freeze_backbone:
            self.branches.eval()
        return self

    @property
    def n_inputs(self) -> int:
        """Number of input tensors ``forward`` expects (one per magnification)."""
        return len(self.magnifications)

    @property
    def fusion_weights(self) -> Tensor:
        """Branch weights ``w`` (one per head; sums to 1): equal, or softmax of the learned vector."""
        return torch.softmax(self.fusion_logits, dim=0)

    def branch(self, index: int) -> Backbone:
        """The backbone that processes input ``index`` (the shared one when shared)."""
        if not 0 <= index < self.n_inputs:
            raise ConfigError(f"input index {index} out of range for {self.n_inputs} magnification(s)")
        return self.branches[0 if self.shared_backbone else index]  # type: ignore[return-value]

    def layer_name(self, index: int, which: Literal["low", "high"] = "high") -> str:
        """Dotted name (for ``get_submodule``) of a branch's first conv or last feature block."""
        if which not in ("low", "high"):
            raise ConfigError(f"which must be 'low' or 'high', got {which!r}")
        backbone = self.branch(index)
        layer = backbone.low_layer if which == "low" else backbone.high_layer
        return f"branches.{0 if self.shared_backbone else index}.{layer}"

    def _as_list(self, xs: Tensor | Sequence[Tensor]) -> list[Tensor]:
        if isinstance(xs, Tensor):
            xs = [xs]
        xs = list(xs)
        if len(xs) != self.n_inputs:
            raise ConfigError(
                f"model expects {self.n_inputs} input(s) (magnifications {list(self.magnifications)}), got {len(xs)}"
            )
        if len({x.shape[0] for x in xs}) != 1:
            raise ConfigError(f"inputs have different batch sizes: {[x.shape[0] for x in xs]}")
        return xs

    def forward_features(self, xs: Tensor | Sequence[Tensor]) -> list[Tensor]:
        """Per-branch feature maps.

        Args:
            xs: one ``(B, 3, H_m, W_m)`` tensor per magnification (a bare tensor for one);
                pixel sizes may differ between magnifications.

        Returns:
            ``(B, C, h_m, w_m)`` maps, in input order.
        """
        return [self.branch(i).forward_features(x) for i, x in enumerate(self._as_list(xs))]

    def forward_head(self, feats: Sequence[Tensor]) -> dict[str, Tensor | list[Tensor]]:
        """Pool the feature maps, apply the head(s) and fuse.

        Args:
            feats: per-branch feature maps from :meth:`forward_features` (or cached ones).

        Returns:
            ``{"logits": [per-head (B, n_classes)], "probs": fused (B, n_classes),
            "log_probs": log of the fused probabilities, "pooled": [per-branch (B, C)],
            "feature_maps": the maps the heads pooled (projected when the encoders are frozen)}``.
        """
        if len(feats) != self.n_inputs:
            raise ConfigError(f"forward_head expects {self.n_inputs} feature map(s), got {len(feats)}")
        if self.freeze_backbone:
            feats = [self.projections[0 if self.shared_backbone else i](f) for i, f in enumerate(feats)]
        pooled = [F.adaptive_avg_pool2d(f, 1).flatten(1) for f in feats]
        if self.spec.head == "concat":
            logits = [self.heads[0](self.dropout(torch.cat(pooled, dim=1)))]
        else:
            logits = [head(self.dropout(p)) for head, p in zip(self.heads, pooled)]
        if len(logits) == 1:
            log_probs = F.log_softmax(logits[0], dim=1)
        else:
            log_w = F.log_softmax(self.fusion_logits, dim=0).to(logits[0].dtype)
            per_branch = torch.stack([F.log_softmax(lg, dim=1) + log_w[m] for m, lg in enumerate(logits)])
            log_probs = torch.logsumexp(per_branch, dim=0)
        return {"logits": logits, "probs": log_probs.exp(), "log_probs": log_probs, "pooled": pooled,
                "feature_maps": list(feats)}

    def forward(self, xs: Tensor | Sequence[Tensor], *, features: bool = False) -> dict[str, Tensor | list[Tensor]]:
        """Full pass: :meth:`forward_head` of :meth:`forward_features` (``"feature_maps"`` feed SIM).

        Args:
            xs: one image batch per magnification; with ``features``, the branches' feature maps
                instead (cached encoder outputs): the encoders are skipped.
        """
        return self.forward_head(self._as_list(xs) if features else self.forward_features(xs))
