"""Backbones: names, feature shapes, layer names, weights from cache/files, timm, registry."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from histomag.errors import CheckpointError, ConfigError, InputPathError
from histomag.backbones import create_backbone, imagenet_checkpoint_path, list_backbones
from histomag.registry import Registry
from histomag.backbones import BACKBONES

TORCHVISION_NAMES = [
    "inception_v3",
    "resnet50",
    "resnet18",
    "vgg19",
    "shufflenet_v2_x1_0",
    "mnasnet1_0",
    "regnet_y_400mf",
    "mobilenet_v3_small",
]


def test_list_backbones_has_every_documented_name() -> None:
    names = list_backbones()
    assert set(TORCHVISION_NAMES + ["tiny"]) <= set(names)
    assert names == sorted(names)


def test_unknown_backbone_raises_config_error_listing_names() -> None:
    with pytest.raises(ConfigError) as info:
        create_backbone("resnet51")
    msg = str(info.value)
    assert "resnet51" in msg and "\n" not in msg
    for name in list_backbones():
        assert name in msg
    assert "timm:" in msg


def _check_layers(backbone, x: torch.Tensor) -> torch.Tensor:
    """Run forward_features and check that low_layer sees the input and high_layer makes the map."""
    seen: dict[str, torch.Tensor] = {}
    low = backbone.get_submodule(backbone.low_layer)
    high = backbone.get_submodule(backbone.high_layer)
    assert isinstance(low, nn.Conv2d)

    def record(key: str, value: torch.Tensor) -> None:  # a hook that returns None keeps the output
        seen.setdefault(key, value)

    h1 = low.register_forward_hook(lambda m, i, o: record("low_in", i[0]))
    h2 = high.register_forward_hook(lambda m, i, o: record("high_out", o))
    try:
        feats = backbone.forward_features(x)
    finally:
        h1.remove()
        h2.remove()
    assert seen["low_in"] is x, "low_layer is not the first conv applied to the input"
    assert torch.equal(seen["high_out"], feats), "high_layer output is not the feature map"
    return feats


@pytest.mark.parametrize("name", TORCHVISION_NAMES + ["tiny"])
def test_backbone_features_match_advertised_channels_and_layers(name: str) -> None:
    backbone = create_backbone(name).eval()
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        feats = _check_layers(backbone, x)
        pooled = backbone(x)
    assert feats.ndim == 4 and feats.shape[1] == backbone.num_features
    assert pooled.shape == (1, backbone.num_features)
    assert torch.allclose(pooled, feats.mean(dim=(2, 3)), atol=1e-5)
    assert backbone.name == name
    assert not any("fc" == n or n.startswith(("fc.", "classifier", "AuxLogits")) for n, _ in backbone.named_modules())


@pytest.mark.parametrize("size", [32, 600])
def test_tiny_backbone_is_small_and_accepts_32_to_600_px(size: int) -> None:
    backbone = create_backbone("tiny")
    n_params = sum(p.numel() for p in backbone.parameters())
    assert 20_000 < n_params < 100_000
    feats = backbone.forward_features(torch.randn(2, 3, size, size))
    assert feats.shape == (2, 64, -(-size // 16), -(-size // 16))


def test_torchvision_backbone_state_dict_is_torchvision_minus_classifier() -> None:
    full = torchvision.models.resnet18(weights=None).state_dict()
    keys = set(create_backbone("resnet18").state_dict())
    assert keys == {k for k in full if not k.startswith("fc.")}


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_imagenet_weights_missing_from_cache_names_path_and_url(hub_dir: Path) -> None:
    expected = hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(ConfigError) as info:
        create_backbone("resnet18", weights="imagenet")
    msg = str(info.value)
    assert str(expected) in msg and "resnet18-f37072fd.pth" in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert "\n" not in msg
    assert not expected.exists()


def test_imagenet_weights_load_from_local_hub_cache(hub_dir: Path) -> None:
    reference = torchvision.models.resnet18(weights=None)
    path, url = imagenet_checkpoint_path(create_backbone("resnet18"))
    assert path == hub_dir / "checkpoints" / Path(url).name
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    backbone = create_backbone("resnet18", weights="imagenet")
    assert torch.equal(backbone.conv1.weight, reference.conv1.weight)
    assert torch.equal(backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_imagenet_weights_with_aux_head_load_for_inception(hub_dir: Path) -> None:
    # torchvision's Inception checkpoint carries AuxLogits.* and fc.*; both must be dropped.
    reference = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = hub_dir / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    loaded = create_backbone("inception_v3", weights="imagenet")
    assert torch.equal(loaded.Mixed_7c.branch_pool.conv.weight, reference.Mixed_7c.branch_pool.conv.weight)


def test_tiny_has_no_imagenet_weights() -> None:
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        create_backbone("tiny", weights="imagenet")


@pytest.mark.parametrize("weights", [None, "none", "None"])
def test_none_weights_mean_random_init(weights) -> None:
    a = create_backbone("tiny", weights=weights)
    b = create_backbone("tiny", weights=weights)
    assert not torch.equal(a.stem[0].weight, b.stem[0].weight)


def test_weights_file_full_classifier_state_dict(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "full.pth"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone("resnet18", weights=path)
    assert torch.equal(backbone.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)


def test_weights_file_wrapped_and_prefixed(tmp_path: Path) -> None:
    source = create_backbone("tiny")
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}
    path = tmp_path / "run.ckpt"
    torch.save(wrapped, path)
    loaded = create_backbone("tiny", weights=str(path))
    assert torch.equal(loaded.stage3[0].weight, source.stage3[0].weight)


def test_weights_file_safetensors(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    source = create_backbone("tiny")
    path = tmp_path / "tiny.safetensors"
    safetensors_torch.save_file(source.state_dict(), str(path))
    loaded = create_backbone("tiny", weights=path)
    assert torch.equal(loaded.stage1[1].running_mean, source.stage1[1].running_mean)


def test_weights_that_do_not_fit_raise_one_line_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(create_backbone("tiny").state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        create_backbone("resnet18", weights=path)
    msg = str(info.value)
    assert "\n" not in msg and "missing" in msg and "unexpected" in msg and "resnet18" in msg


def test_weights_with_wrong_shapes_raise_checkpoint_error(tmp_path: Path) -> None:
    sd = create_backbone("tiny").state_dict()
    sd["stem.0.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="shape mismatches.*stem.0.weight"):
        create_backbone("tiny", weights=path)


def test_weights_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(InputPathError):
        create_backbone("tiny", weights=tmp_path / "absent.pth")
    with pytest.raises(ConfigError, match="imagenet"):
        create_backbone("tiny", weights=str(tmp_path / "weights.txt"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        create_backbone("tiny", weights=corrupt)
    not_sd = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_sd)
    with pytest.raises(CheckpointError, match="state dict"):
        create_backbone("tiny", weights=not_sd)


def test_timm_backbone_by_name(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    backbone = create_backbone("timm:resnet10t").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = _check_layers(backbone, x)
    assert feats.shape[1] == backbone.num_features
    assert backbone.name == "timm:resnet10t"
    # a full timm state dict (with its classifier) loads into the backbone
    full = timm.create_model("resnet10t", pretrained=False, num_classes=7)
    path = tmp_path / "r10t.pth"
    torch.save(full.state_dict(), path)
    loaded = create_backbone("timm:resnet10t", weights=path)
    assert torch.equal(loaded.model.layer4[0].conv1.weight, full.layer4[0].conv1.weight)
    with pytest.raises(ConfigError, match="unknown timm model"):
        create_backbone("timm:no_such_net_xyz")
    with pytest.raises(ConfigError, match="local state-dict file"):
        create_backbone("timm:resnet10t", weights="imagenet")


def test_timm_missing_gives_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ConfigError, match=r"histomag\[timm\]"):
        create_backbone("timm:resnet10t")


def test_registry_register_get_and_duplicates() -> None:
    reg: Registry = Registry("head", hint="(or custom)")

    @reg.register()
    def linear() -> str:
        return "linear"

    assert reg.get("linear")() == "linear" and "linear" in reg and len(reg) == 1
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register("linear")(linear)
    with pytest.raises(ConfigError, match="valid names: linear \\(or custom\\)"):
        reg.get("mlp")
    with pytest.raises(ConfigError, match="':'"):
        reg.register("timm:x")(linear)
    assert "tiny" in BACKBONES
