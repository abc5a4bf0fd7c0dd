"""Models: backbones by name, DMSL modes by name, the multi-magnification network (DMSL) and its losses.

Names are imported lazily, so ``histomag.models.modes`` and ``histomag.models.registry`` (no torch)
can be used by torch-free code such as the HTML report.

Example:
    >>> from histomag.models import DMSLLoss, MultiMagNet
    >>> net = MultiMagNet("tiny", n_classes=3, magnifications=(40, 20))
    >>> loss = DMSLLoss.for_mode(net.mode)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "BACKBONES": "backbones", "Backbone": "backbones", "create_backbone": "backbones",
    "imagenet_checkpoint_path": "backbones", "list_backbones": "backbones", "load_state_dict_file": "backbones",
    "register_backbone": "backbones",
    "MultiMagNet": "dmsl",
    "ModeSpec": "modes", "get_mode": "modes", "mode_names": "modes", "register_mode": "modes",
    "Registry": "registry",
    "DMSLLoss": "similarity", "SimilarityLoss": "similarity", "channel_max_maps": "similarity",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"histomag.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'histomag.models' has no attribute {name!r}")
