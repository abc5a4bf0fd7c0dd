"""Models: backbones by name, the multi-magnification network (DMSL) and its losses.

Example:
    >>> from histomag.models import DMSLLoss, MultiMagNet
    >>> net = MultiMagNet("tiny", n_classes=3, magnifications=(40, 20))
    >>> loss = DMSLLoss.for_mode(net.mode)
"""

from histomag.models.backbones import (
    BACKBONES,
    Backbone,
    create_backbone,
    imagenet_checkpoint_path,
    list_backbones,
    load_state_dict_file,
    register_backbone,
)
from histomag.models.dmsl import MODES, MultiMagNet
from histomag.models.registry import Registry
from histomag.models.similarity import DMSLLoss, SimilarityLoss, channel_max_maps

__all__ = [
    "BACKBONES",
    "MODES",
    "Backbone",
    "DMSLLoss",
    "MultiMagNet",
    "Registry",
    "SimilarityLoss",
    "channel_max_maps",
    "create_backbone",
    "imagenet_checkpoint_path",
    "list_backbones",
    "load_state_dict_file",
    "register_backbone",
]
