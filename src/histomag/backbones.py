"""Feature-extractor backbones by name: torchvision CNNs, a tiny CPU net, and any timm CNN or ViT.

Every backbone is a :class:`Backbone`: the network with its classifier removed, exposing
``forward_features`` (the last feature map, ``(B, C, h, w)``) and ``forward`` (that map
globally average-pooled, ``(B, C)``), plus the dotted names of its first conv (``low_layer``)
and last feature block (``high_layer``) for Grad-CAM (resolve them with ``get_submodule``).

Torchvision backbones keep torchvision's module names, so a backbone's ``state_dict`` is
torchvision's minus the classifier keys, and torchvision/ImageNet checkpoints load directly.

Weights are never downloaded: ``weights="imagenet"`` reads torchvision's checkpoint from the
local torch hub cache (``torch.hub.get_dir()/checkpoints/<file name of the weights' URL>``) and
raises :class:`~histomag.errors.ConfigError` naming that path when the file is not there.

Example:
    >>> net = create_backbone("tiny")
    >>> net.forward_features(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 64, 4, 4])
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from histomag.errors import CheckpointError, ConfigError, InputPathError
from histomag.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_PREFIX = "timm:"
WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")

#: Registered backbone factories; each is called with no arguments and returns a random-init
#: :class:`Backbone`. Register more with ``@register_backbone("name")``.
BACKBONES: Registry = Registry("backbone", hint=f"(or {TIMM_PREFIX}NAME for any timm model)")
register_backbone = BACKBONES.register


class Backbone(nn.Module):
    """A CNN without its classifier.

    Attributes:
        name: the name it was created under ("resnet50", "timm:resnet10t", ...).
        num_features: channels of the feature map (= length of the pooled vector).
        low_layer: dotted name of the first conv layer, resolvable with ``get_submodule``.
        high_layer: dotted name of the last feature block, whose output is the feature map.
        classifier_keys: state-dict key prefixes of the removed classifier; dropped on load.
        key_prefix: prefix of this module's own state-dict keys relative to the wrapped net.
        imagenet_weights: torchvision ``WeightsEnum`` member for ``weights="imagenet"``, or None.
        input_mean: per-channel mean the pretrained weights expect (RGB in [0, 1]).
        input_std: per-channel std the pretrained weights expect.
    """

    name: str = ""
    num_features: int = 0
    low_layer: str = ""
    high_layer: str = ""
    classifier_keys: tuple[str, ...] = ()
    key_prefix: str = ""
    imagenet_weights: Any = None
    input_mean: tuple[float, float, float] = IMAGENET_MEAN
    input_std: tuple[float, float, float] = IMAGENET_STD

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map before global pooling, ``(B, num_features, h, w)``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Globally average-pooled features, ``(B, num_features)``."""
        return F.adaptive_avg_pool2d(self.forward_features(x), 1).flatten(1)

    def load_weights(self, state_dict: Mapping[str, Tensor], *, source: str = "state dict") -> None:
        """Load a backbone or full-classifier state dict, strictly.

        Keys of the removed classifier (``classifier_keys``) are dropped, a ``module.`` or
        ``backbone.`` prefix shared by every key is stripped, and ``key_prefix`` is added when
        the file holds the bare wrapped network. Missing ``num_batches_tracked`` buffers are
        tolerated; anything else that does not fit is an error.

        Args:
            state_dict: parameter name -> tensor.
            source: where it came from, for the error message.

        Raises:
            CheckpointError: missing keys, unexpected keys or shape mismatches (one line that
                counts each and names the first few).
        """
        sd = dict(state_dict)
        for prefix in ("module.", "backbone."):
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
        if self.key_prefix and not any(k.startswith(self.key_prefix) for k in sd):
            sd = {self.key_prefix + k: v for k, v in sd.items()}
        if self.classifier_keys:
            sd = {k: v for k, v in sd.items() if not k.startswith(self.classifier_keys)}
        own = self.state_dict()
        missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in sd if k not in own]
        mismatched = [
            f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
            for k in sd
            if k in own and tuple(sd[k].shape) != tuple(own[k].shape)
        ]
        problems = [
            f"{len(items)} {what} (e.g. {', '.join(items[:3])})"
            for what, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched))
            if items
        ]
        if problems:
            raise CheckpointError(
                f"weights from {source} do not fit backbone {self.name!r}: {'; '.join(problems)}"
            )
        self.load_state_dict(sd, strict=False)


class StagedBackbone(Backbone):
    """A backbone that runs named stages in order; the stages are its direct children.

    Args:
        name: registry name.
        stages: ``(name, module)`` pairs, applied in order by ``forward_features``.
        num_features: channels of the last stage's output.
        low_layer: dotted name of the first conv.
        high_layer: dotted name of the last feature block.
        classifier_keys: key prefixes to drop from full-network state dicts.
        imagenet_weights: torchvision weights enum member, if any.
        input_mean: normalisation mean for the pretrained weights.
        input_std: normalisation std for the pretrained weights.
    """

    def __init__(
        self,
        name: str,
        stages: Sequence[tuple[str, nn.Module]],
        *,
        num_features: int,
        low_layer: str,
        high_layer: str,
        classifier_keys: tuple[str, ...] = (),
        imagenet_weights: Any = None,
        input_mean: tuple[float, float, float] = IMAGENET_MEAN,
        input_std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        for stage_name, module in stages:
            self.add_module(stage_name, module)
        self.stage_names = tuple(stage_name for stage_name, _ in stages)
        self.name = name
        self.num_features = num_features
        self.low_layer = low_layer
        self.high_layer = high_layer
        self.classifier_keys = classifier_keys
        self.imagenet_weights = imagenet_weights
        self.input_mean = input_mean
        self.input_std = input_std

    def forward_features(self, x: Tensor) -> Tensor:
        for stage_name in self.stage_names:
            x = self._modules[stage_name](x)  # type: ignore[misc]
        return x


class TimmBackbone(Backbone):
    """Any timm model, created with ``num_classes=0`` and wrapped as ``model``: a CNN, or a ViT.

    A CNN's feature map is its last stage's output. A vision transformer (a model with a
    ``patch_embed``, e.g. ``vit_base_patch16_224`` or a pathology foundation model's ViT)
    returns tokens ``(B, prefix + h * w, C)``: the ``num_prefix_tokens`` class/register tokens
    are dropped and the patch tokens are laid out on the patch grid as a ``(B, C, h, w)`` map,
    so pooling, SIM (channel maximum at each patch) and Grad-CAM work as for a CNN. ViTs are
    created with ``dynamic_img_size=True`` (position embeddings resampled to the input), so
    a branch may take 600 px or 300 px inputs; ``high_layer`` is ``token_map``, the module
    whose output is that map.

    Args:
        model_name: a timm model name (see ``timm.list_models()``), optionally followed by
            constructor arguments: ``"vit_large_patch16_224,init_values=1e-5"`` (values are
            Python literals; anything else is a string). ``mean=(r,g,b)`` and ``std=(r,g,b)``
            are not passed on: they set the input normalisation the weights expect (default:
            the architecture's timm ``pretrained_cfg``).

    Raises:
        ConfigError: timm is not installed, the name is unknown, bad arguments, or no conv.
    """

    key_prefix = "model."

    def __init__(self, model_name: str) -> None:
        super().__init__()
        try:
            import timm
        except ImportError:
            raise ConfigError(
                f"backbone {TIMM_PREFIX}{model_name} needs the optional extra timm: pip install 'histomag[timm]'"
            ) from None
        arch, kwargs = parse_timm_name(model_name)
        if not timm.is_model(arch):
            raise ConfigError(f"unknown timm model {arch!r}; list valid names with timm.list_models()")
        norm = {k: kwargs.pop(k) for k in ("mean", "std") if k in kwargs}  # ours, not the constructor's
        self.model = _create_timm(timm, arch, kwargs, model_name)
        convs = [n for n, m in self.model.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ConfigError(f"timm model {arch!r} has no Conv2d layer; use a convolutional model or a ViT")
        self.tokens = hasattr(self.model, "patch_embed") and hasattr(self.model, "num_prefix_tokens")
        self.token_map = nn.Identity()  # a ViT's patch-token map passes through it (Grad-CAM's high layer)
        self.name = TIMM_PREFIX + model_name
        self.num_features = int(self.model.num_features)
        self.low_layer = self.key_prefix + convs[0]
        high = convs[-1]
        feature_info = getattr(self.model, "feature_info", None)
        if isinstance(feature_info, list) and feature_info and feature_info[-1].get("module"):
            high = feature_info[-1]["module"]
        self.high_layer = "token_map" if self.tokens else self.key_prefix + high
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        heads = cfg.get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        self.classifier_keys = tuple(f"{self.key_prefix}{h}." for h in heads)
        self.input_mean = tuple(norm.get("mean", cfg.get("mean", IMAGENET_MEAN)))  # type: ignore[assignment]
        self.input_std = tuple(norm.get("std", cfg.get("std", IMAGENET_STD)))  # type: ignore[assignment]
        if len(self.input_mean) != 3 or len(self.input_std) != 3:
            raise ConfigError(f"{self.name}: mean and std take three values (R, G, B), e.g. mean=(0.485,0.456,0.406)")

    def forward_features(self, x: Tensor) -> Tensor:
        y = self.model.forward_features(x)
        if y.ndim == 3 and self.tokens:
            return self.token_map(self._token_grid(y, tuple(x.shape[-2:])))  # type: ignore[arg-type]
        if y.ndim != 4:
            raise ConfigError(
                f"{self.name} returns features of shape {tuple(y.shape)}, not a (B, C, h, w) map nor ViT tokens; "
                "use a convolutional timm model or a vision transformer"
            )
        if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
            y = y.permute(0, 3, 1, 2)
        return y

    def _token_grid(self, tokens: Tensor, size: tuple[int, int]) -> Tensor:
        """ViT tokens ``(B, prefix + h * w, C)`` -> patch-token map ``(B, C, h, w)``."""
        patch = tokens[:, int(getattr(self.model, "num_prefix_tokens", 0)) :]
        embed = self.model.patch_embed
        if getattr(self.model, "dynamic_img_size", False) and hasattr(embed, "dynamic_feat_size"):
            h, w = embed.dynamic_feat_size(size)
        else:
            h, w = embed.grid_size
        if h * w != patch.shape[1]:
            raise ConfigError(
                f"{self.name}: {patch.shape[1]} patch tokens do not fill its {h}x{w} patch grid; "
                "use a ViT without token pooling or merging"
            )
        return patch.transpose(1, 2).reshape(patch.shape[0], patch.shape[2], int(h), int(w))


def parse_timm_name(model_name: str) -> tuple[str, dict[str, Any]]:
    """``"vit_large_patch16_224,init_values=1e-5"`` -> ``("vit_large_patch16_224", {"init_values": 1e-5})``.

    Raises:
        ConfigError: an argument without ``=``.
    """
    import ast

    parts, depth, start = [], 0, 0
    for i, ch in enumerate(model_name + ","):  # split on the commas outside brackets
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(model_name[start:i].strip())
            start = i + 1
    arch, *parts = parts
    kwargs: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ConfigError(f"timm model argument {part!r} in {model_name!r} is not key=value; "
                              "e.g. timm:vit_large_patch16_224,init_values=1e-5")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()
    return arch, kwargs


def _create_timm(timm: Any, arch: str, kwargs: dict[str, Any], model_name: str) -> nn.Module:
    """Create a timm model at random init (never downloading); ViTs with ``dynamic_img_size``."""
    tries = [{"dynamic_img_size": True, **kwargs}, kwargs] if "dynamic_img_size" not in kwargs else [kwargs]
    for i, kw in enumerate(tries):
        try:
            return timm.create_model(arch, pretrained=False, num_classes=0, **kw)
        except TypeError as exc:
            if i + 1 < len(tries):
                continue  # not a ViT: it takes no dynamic_img_size
            raise ConfigError(f"timm model {model_name!r}: {str(exc).splitlines()[0]}; "
                              "pass only arguments its constructor takes") from None
    raise AssertionError("unreachable")


def _torchvision(
    name: str,
    stage_names: Sequence[str],
    *,
    num_features: int,
    low_layer: str,
    high_layer: str,
    classifier_keys: tuple[str, ...],
    input_mean: tuple[float, float, float] = IMAGENET_MEAN,
    input_std: tuple[float, float, float] = IMAGENET_STD,
    **ctor: Any,
) -> StagedBackbone:
    """Build a torchvision model at random init and keep the named feature stages."""
    from torchvision import models as tvm

    net = tvm.get_model(name, weights=None, **ctor)
    return StagedBackbone(
        name,
        [(s, getattr(net, s)) for s in stage_names],
        num_features=num_features,
        low_layer=low_layer,
        high_layer=high_layer,
        classifier_keys=classifier_keys,
        imagenet_weights=tvm.get_model_weights(name).DEFAULT,
        input_mean=input_mean,
        input_std=input_std,
    )


_RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


@register_backbone("inception_v3")
def inception_v3() -> StagedBackbone:
    """Inception-v3 (the paper's default), 2048 features; needs inputs of at least 75 px.

    ``transform_input=False``: feed inputs normalised with ``input_mean``/``input_std``
    (0.5/0.5, the normalisation Google's ImageNet weights were trained with).
    """
    stages = (
        "Conv2d_1a_3x3 Conv2d_2a_3x3 Conv2d_2b_3x3 maxpool1 Conv2d_3b_1x1 Conv2d_4a_3x3 maxpool2 "
        "Mixed_5b Mixed_5c Mixed_5d Mixed_6a Mixed_6b Mixed_6c Mixed_6d Mixed_6e Mixed_7a Mixed_7b Mixed_7c"
    ).split()
    return _torchvision(
        "inception_v3", stages, num_features=2048, low_layer="Conv2d_1a_3x3.conv", high_layer="Mixed_7c",
        classifier_keys=("fc.", "AuxLogits."), input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.5, 0.5),
        aux_logits=False, transform_input=False, init_weights=True,
    )  # fmt: skip


@register_backbone("resnet50")
def resnet50() -> StagedBackbone:
    """ResNet-50, 2048 features."""
    return _torchvision(
        "resnet50", _RESNET_STAGES, num_features=2048, low_layer="conv1", high_layer="layer4", classifier_keys=("fc.",)
    )


@register_backbone("resnet18")
def resnet18() -> StagedBackbone:
    """ResNet-18, 512 features."""
    return _torchvision(
        "resnet18", _RESNET_STAGES, num_features=512, low_layer="conv1", high_layer="layer4", classifier_keys=("fc.",)
    )


@register_backbone("vgg19")
def vgg19() -> StagedBackbone:
    """VGG-19 convolutional part (ends with its last max-pool), 512 features."""
    return _torchvision(
        "vgg19", ("features",), num_features=512, low_layer="features.0", high_layer="features.36",
        classifier_keys=("classifier.",),
    )  # fmt: skip


@register_backbone("shufflenet_v2_x1_0")
def shufflenet_v2_x1_0() -> StagedBackbone:
    """ShuffleNet-v2 1.0x, 1024 features."""
    return _torchvision(
        "shufflenet_v2_x1_0", ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"), num_features=1024,
        low_layer="conv1.0", high_layer="conv5", classifier_keys=("fc.",),
    )  # fmt: skip


@register_backbone("mnasnet1_0")
def mnasnet1_0() -> StagedBackbone:
    """MnasNet 1.0, 1280 features."""
    return _torchvision(
        "mnasnet1_0", ("layers",), num_features=1280, low_layer="layers.0", high_layer="layers.16",
        classifier_keys=("classifier.",),
    )  # fmt: skip


@register_backbone("regnet_y_400mf")
def regnet_y_400mf() -> StagedBackbone:
    """RegNetY-400MF, 440 features."""
    return _torchvision(
        "regnet_y_400mf", ("stem", "trunk_output"), num_features=440, low_layer="stem.0",
        high_layer="trunk_output", classifier_keys=("fc.",),
    )  # fmt: skip


@register_backbone("mobilenet_v3_small")
def mobilenet_v3_small() -> StagedBackbone:
    """MobileNet-v3 small convolutional part (without the 1024-wide head layer), 576 features."""
    return _torchvision(
        "mobilenet_v3_small", ("features",), num_features=576, low_layer="features.0.0",
        high_layer="features.12", classifier_keys=("classifier.",),
    )  # fmt: skip


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


@register_backbone("tiny")
def tiny() -> StagedBackbone:
    """Four stride-2 conv-BN-ReLU layers (~47k parameters, 64 features) for tests and CPU demos.

    Output stride 16: a 32 px input gives a 2x2 map, 600 px a 38x38 map.
    """
    widths = (16, 32, 48, 64)
    names = ("stem", "stage1", "stage2", "stage3")
    stages, c_in = [], 3
    for stage_name, c_out in zip(names, widths):
        stages.append((stage_name, _conv_bn_relu(c_in, c_out, 2)))
        c_in = c_out
    return StagedBackbone("tiny", stages, num_features=widths[-1], low_layer="stem.0", high_layer="stage3")


@register_backbone("small")
def small() -> StagedBackbone:
    """A compact ResNet (one basic block per stage, widths 24-32-64-128-256, ~1.2M parameters).

    Sized for the magnification model shipped with histomag (a few MB on disk) and for training
    from scratch on two CPU cores (~0.07 GMAC for a 128 px crop); output stride 32.
    """
    from torchvision.models.resnet import BasicBlock

    def stage(c_in: int, c_out: int) -> nn.Sequential:
        down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, 2, bias=False), nn.BatchNorm2d(c_out))
        return nn.Sequential(BasicBlock(c_in, c_out, 2, down))

    stages = [("stem", _conv_bn_relu(3, 24, 2)), ("stage1", stage(24, 32)), ("stage2", stage(32, 64)),
              ("stage3", stage(64, 128)), ("stage4", stage(128, 256))]
    return StagedBackbone("small", stages, num_features=256, low_layer="stem.0", high_layer="stage4")


def list_backbones() -> list[str]:
    """Registered backbone names, sorted (``timm:NAME`` is accepted in addition)."""
    return BACKBONES.names()


def imagenet_checkpoint_path(backbone: Backbone) -> tuple[Path, str]:
    """Where ``weights="imagenet"`` looks for a backbone's torchvision checkpoint.

    Returns:
        ``(path, url)``: ``torch.hub.get_dir()/checkpoints/<file name of url>`` and the URL the
        file is published at (download it elsewhere and copy it to ``path``).

    Raises:
        ConfigError: the backbone has no torchvision ImageNet weights.
    """
    if backbone.imagenet_weights is None:
        raise ConfigError(
            f"backbone {backbone.name!r} has no ImageNet weights; use weights=None or a path to a state dict"
        )
    url: str = backbone.imagenet_weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path), url


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from ``.pt``/``.pth``/``.ckpt`` (torch, weights only) or ``.safetensors``.

    A dict holding its tensors under ``"state_dict"``, ``"model_state_dict"`` or ``"model"``
    (Lightning or training checkpoints) is unwrapped.

    Raises:
        InputPathError: the file does not exist.
        ConfigError: unsupported suffix, or safetensors is not installed.
        CheckpointError: the file cannot be read or holds no state dict.
    """
    path = Path(path)
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ConfigError(
            f"weights {str(path)!r} is neither None, 'none', 'imagenet' nor a {'/'.join(WEIGHT_SUFFIXES)} file"
        )
    if not path.is_file():
        raise InputPathError(f"weights file {path} does not exist; pass an existing state-dict file")
    try:
        if path.suffix.lower() == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise ConfigError(f"reading {path} needs safetensors: pip install safetensors") from None
            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except Exception as exc:  # torch/safetensors raise many types for corrupt files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot read weights file {path}: {first}") from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"weights file {path} does not hold a state dict (name -> tensor)")
    return dict(obj)


def create_backbone(name: str, *, weights: str | os.PathLike[str] | None = None) -> Backbone:
    """Create a backbone by name, optionally with weights.

    Args:
        name: a registered name (see :func:`list_backbones`) or ``timm:NAME``.
        weights: ``None``/``"none"`` (random init), ``"imagenet"`` (torchvision weights from
            the local hub cache; never downloaded), or a path to a ``.pt``/``.pth``/``.ckpt``/
            ``.safetensors`` state dict of the backbone or of the full classifier network.

    Returns:
        The backbone, in training mode.

    Raises:
        ConfigError: unknown name (the message lists valid names), ImageNet weights not in the
            cache (the message names the file path and URL), or a bad ``weights`` value.
        InputPathError: the weights file does not exist.
        CheckpointError: the weights do not fit the backbone.
    """
    if name.startswith(TIMM_PREFIX):
        backbone: Backbone = TimmBackbone(name[len(TIMM_PREFIX) :])
    else:
        backbone = BACKBONES.get(name)()
    if weights is None or (isinstance(weights, str) and weights.strip().lower() in ("", "none")):
        return backbone
    if isinstance(weights, str) and weights.strip().lower() == "imagenet":
        if isinstance(backbone, TimmBackbone):
            raise ConfigError(
                f"weights='imagenet' is for torchvision backbones; for {name} pass a local state-dict file"
            )
        path, url = imagenet_checkpoint_path(backbone)
        if not path.is_file():
            raise ConfigError(
                f"ImageNet weights for {name} are not in the local cache: put {path.name} (from {url}) "
                f"at {path}; histomag never downloads"
            )
        backbone.load_weights(load_state_dict_file(path), source=str(path))
        return backbone
    backbone.load_weights(load_state_dict_file(weights), source=str(weights))
    return backbone
