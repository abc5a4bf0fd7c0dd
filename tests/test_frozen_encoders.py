"""Frozen pretrained encoders: timm ViTs as branches (patch tokens as the feature map), local weights, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from histomag.backbones import create_backbone, parse_timm_name
from histomag.dmsl.config import DMSLConfig
from histomag.dmsl.fit import DMSLTask
from histomag.dmsl.network import MultiMagNet
from histomag.errors import CheckpointError, ConfigError

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")

#: a randomly initialised two-block ViT (~56k parameters): timm's vit_tiny with constructor arguments
VIT = "timm:vit_tiny_patch16_224,depth=2,embed_dim=32,num_heads=2"


def test_a_vit_gives_its_patch_tokens_as_a_map_on_the_patch_grid() -> None:
    vit = create_backbone(VIT).eval()
    x = torch.rand(2, 3, 64, 48)
    tokens = vit.model.forward_features(x)  # (B, 1 + 4 * 3, C): the class token first
    fmap = vit.forward_features(x)
    assert tokens.shape == (2, 1 + 12, 32) and fmap.shape == (2, 32, 4, 3)
    assert torch.equal(fmap, tokens[:, 1:].transpose(1, 2).reshape(2, 32, 4, 3))
    assert fmap[:, :, 1, 2].allclose(tokens[:, 1 + 1 * 3 + 2])  # row-major: token (row 1, col 2)
    assert vit(torch.rand(1, 3, 32, 32)).shape == (1, 32)  # any input size (position embeddings resampled)
    assert vit.high_layer == "token_map" and vit.low_layer == "model.patch_embed.proj"
    assert vit.get_submodule(vit.low_layer) is vit.model.patch_embed.proj


def test_register_tokens_are_dropped_too() -> None:
    vit = create_backbone(VIT + ",reg_tokens=4").eval()
    assert vit.model.num_prefix_tokens == 5
    assert vit.forward_features(torch.rand(1, 3, 32, 32)).shape == (1, 32, 2, 2)


def test_timm_names_take_constructor_arguments() -> None:
    assert parse_timm_name("vit_large_patch16_224,init_values=1e-5, act_layer=gelu") == (
        "vit_large_patch16_224", {"init_values": 1e-5, "act_layer": "gelu"})
    # mean/std (with their commas) set the normalisation the weights expect; they are not constructor arguments
    vit = create_backbone(VIT + ",mean=(0.485, 0.456, 0.406),std=(0.229,0.224,0.225)")
    assert vit.input_mean == (0.485, 0.456, 0.406) and vit.input_std == (0.229, 0.224, 0.225)
    assert create_backbone(VIT).input_mean == (0.5, 0.5, 0.5)  # timm's pretrained_cfg for the architecture
    with pytest.raises(ConfigError, match="key=value"):
        parse_timm_name("vit_tiny_patch16_224,depth")
    with pytest.raises(ConfigError, match="constructor"):
        create_backbone("timm:resnet10t,no_such_argument=1")


def test_a_vit_loads_a_local_weights_file_and_a_foreign_one_fails_in_one_line(tmp_path: Path) -> None:
    # a full timm model with a classifier, as a published checkpoint would be
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=2, embed_dim=32,
                            num_heads=2, dynamic_img_size=True).eval()
    path = tmp_path / "vit.pth"
    torch.save(src.state_dict(), path)
    vit = create_backbone(VIT, weights=path).eval()
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(vit.forward_features(x), src.forward_features(x)[:, 1:].transpose(1, 2).reshape(1, 32, 2, 2))
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=3, embed_dim=32, num_heads=2).state_dict(),
               tmp_path / "deeper.pth")
    with pytest.raises(CheckpointError, match="unexpected") as err:
        create_backbone(VIT, weights=tmp_path / "deeper.pth")
    assert "\n" not in str(err.value)


def _batch(n: int = 4) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(n, 3, 64, 64, generator=g), torch.rand(n, 3, 32, 32, generator=g)], torch.arange(n) % 2, torch.arange(n)


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
@pytest.mark.parametrize("backbone", [VIT, "tiny"])
def test_a_training_step_moves_the_heads_and_projections_but_not_the_frozen_encoders(backbone: str) -> None:
    config = DMSLConfig(backbone=backbone, freeze_backbone=True, mode="sim", fusion="learned", lr=1e-2, augment=False)
    task = DMSLTask(config, ["a", "b"])
    task.train()
    assert not any(b.training for b in task.model.branches) and task.model.heads.training  # BN statistics stay
    before = {k: v.clone() for k, v in task.state_dict().items()}
    optimiser = task.configure_optimizers()
    trained = {id(p) for group in optimiser.param_groups for p in group["params"]}
    assert trained == {id(p) for n, p in task.named_parameters() if not n.startswith("model.branches.")}
    optimiser.zero_grad()
    task.training_step(_batch(), 0).backward()
    optimiser.step()
    after = task.state_dict()
    frozen = [k for k in before if k.startswith("model.branches.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # weights and BN buffers
    for prefix in ("model.heads.", "model.projections.", "model.fusion_logits"):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    assert all(p.grad is None for p in task.model.branches.parameters())


def test_sim_compares_the_projected_token_maps_of_a_frozen_vit() -> None:
    net = MultiMagNet(VIT, 2, (40, 20), mode="sim", freeze_backbone=True).eval()
    xs, _, _ = _batch(2)
    out = net(xs)
    maps = out["feature_maps"]
    assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 4), (2, 32, 2, 2)]
    raw = net.forward_features(xs)
    assert all(torch.allclose(m, p(f)) for m, p, f in zip(maps, net.projections, raw))
    cached = net(raw, features=True)  # the same from the encoders' maps (what a feature cache holds)
    assert torch.allclose(cached["probs"], out["probs"])


def test_grad_cam_reaches_a_frozen_vits_token_map() -> None:
    from histomag.dmsl.explain.gradcam import tuple_cams

    net = MultiMagNet(VIT, 2, (40, 20), mode="sim", freeze_backbone=True).eval()
    assert net.layer_name(0, "high") == "branches.0.token_map"
    xs, _, _ = _batch(1)
    cams = tuple_cams(net, [x[0] for x in xs])
    assert cams[(0, "high")].shape == (64, 64) and cams[(1, "low")].shape == (32, 32)


def test_old_configs_read_as_trained_encoders_and_the_cache_needs_frozen_unaugmented_ones() -> None:
    old = {k: v for k, v in DMSLConfig().to_dict().items() if k not in ("freeze_backbone", "cache_features")}
    assert DMSLConfig.from_dict(old).freeze_backbone is False
    with pytest.raises(ConfigError, match="freeze_backbone=True"):
        DMSLConfig(cache_features=True, augment=False)
    with pytest.raises(ConfigError, match="augment=False"):
        DMSLConfig(cache_features=True, freeze_backbone=True)
    assert DMSLConfig(cache_features=True, freeze_backbone=True, augment=False).cache_features
