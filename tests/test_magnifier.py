"""The Hagnifinder regressor, its Adaptive Scaling Module and the level classifier (tiny sizes, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from histomag.errors import ConfigError
from histomag.magnification.network import (
    AdaptiveScaling,
    MagnificationClassifier,
    MagnificationRegressor,
    nearest_level,
    recalibrate_statistics,
)


def _batch(seed: int, n: int = 8, f: int = 20, scale: float = 7.0, shift: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, f, generator=g) * scale + shift


def _paper_scale(x: torch.Tensor, target: float = 2.2) -> float:
    """The ASM factor exactly as the paper writes it: sqrt(target / var(x / X)) / X."""
    big_x = x.abs().max()
    return float(torch.sqrt(target / (x / big_x).var()) / big_x)


def test_asm_training_batch_has_the_target_variance() -> None:
    asm = AdaptiveScaling().train()
    x = _batch(0)
    y = asm(x)
    assert y.var().item() == pytest.approx(2.2, rel=1e-5)
    assert (y / x).flatten().tolist() == pytest.approx([_paper_scale(x)] * x.numel(), rel=1e-5)
    other = AdaptiveScaling(target_variance=0.5).train()
    assert other(x * 100).var().item() == pytest.approx(0.5, rel=1e-5)


def test_asm_running_scale_follows_batches_and_is_used_in_eval() -> None:
    asm = AdaptiveScaling(momentum=0.1).train()
    x1, x2, x3 = _batch(1), _batch(2, scale=30.0), _batch(3)
    asm(x1)
    s1 = _paper_scale(x1)
    assert asm.running_scale.item() == pytest.approx(s1, rel=1e-5)  # the first batch initialises it
    asm(x2)
    expected = 0.9 * s1 + 0.1 * _paper_scale(x2)
    assert asm.running_scale.item() == pytest.approx(expected, rel=1e-5)
    assert int(asm.num_batches_tracked) == 2
    asm.eval()
    y = asm(x3)
    assert torch.allclose(y, x3 * expected, rtol=1e-5)
    assert asm.running_scale.item() == pytest.approx(expected, rel=1e-5)  # eval does not update
    assert int(asm.num_batches_tracked) == 2

    cumulative = AdaptiveScaling(momentum=None).train()
    for x in (x1, x2, x3):
        cumulative(x)
    mean = sum(_paper_scale(x) for x in (x1, x2, x3)) / 3
    assert cumulative.running_scale.item() == pytest.approx(mean, rel=1e-5)


def test_asm_statistics_are_detached() -> None:
    asm = AdaptiveScaling().train()
    x = _batch(4).requires_grad_(True)
    asm(x).sum().backward()
    # with the statistics detached dy/dx is the batch scale everywhere; through max and var it would vary
    assert x.grad is not None
    assert torch.allclose(x.grad, torch.full_like(x, _paper_scale(x.detach())), rtol=1e-5)


def test_asm_degenerate_batches_stay_finite() -> None:
    asm = AdaptiveScaling().train()
    zeros = torch.zeros(4, 20)
    assert torch.equal(asm(zeros), zeros)
    const = torch.full((4, 20), 3.0)
    assert torch.allclose(asm(const), torch.ones(4, 20))  # no variance: only divided by X
    assert math.isfinite(asm.running_scale.item())
    with pytest.raises(ConfigError):
        AdaptiveScaling(target_variance=0)


def _warmed_regressor(target: str = "linear", seed: int = 0) -> MagnificationRegressor:
    torch.manual_seed(seed)
    model = MagnificationRegressor("tiny", target=target).train()  # type: ignore[arg-type]
    with torch.no_grad():
        for i in range(3):  # move BatchNorm and ASM running statistics away from their init
            model(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(100 + i)) * 2 - 1)
    return model


def test_eval_predictions_do_not_depend_on_the_batch() -> None:
    model = _warmed_regressor()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.no_grad():
        model.eval()
        batched = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
        assert torch.allclose(batched, single, atol=1e-5)
        pred = model.predict_magnification(x)
        assert torch.allclose(pred, torch.cat([model.predict_magnification(x[i : i + 1]) for i in range(6)]), atol=1e-5)
        # the same comparison in training mode (batch statistics) differs: the check above is meaningful
        model.train()
        batched_t = model(x)
        single_t = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
        assert not torch.allclose(batched_t, single_t, atol=1e-3)


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    mags = torch.tensor([4.0, 10.0, 20.0, 40.0])
    reg = MagnificationRegressor("tiny", target="log").train()
    F.huber_loss(reg(x), reg.to_target(mags)).backward()
    cls = MagnificationClassifier("tiny").train()
    F.cross_entropy(cls(x), cls.level_index(mags)).backward()
    for model in (reg, cls):
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_regressor_output_targets_and_clamping() -> None:
    lin = MagnificationRegressor("tiny", mag_range=(1, 40)).eval()
    log = MagnificationRegressor("tiny", target="log", mag_range=(1, 40)).eval()
    x = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        lin.fc3.weight.zero_()
        lin.fc3.bias.zero_()
        log.fc3.weight.zero_()
        log.fc3.bias.zero_()
        assert lin(x).tolist() == pytest.approx([20.5, 20.5])  # centre of the range
        assert log.predict_magnification(x).tolist() == pytest.approx([math.sqrt(40)] * 2, rel=1e-5)
        lin.fc3.bias.fill_(5.0)  # far outside the range: clamped
        assert lin.predict_magnification(x).tolist() == pytest.approx([40.0, 40.0])
        lin.fc3.bias.fill_(-5.0)
        assert lin.predict_magnification(x).tolist() == pytest.approx([1.0, 1.0])
    assert log.to_target(torch.tensor([math.e])).item() == pytest.approx(1.0)
    assert lin.forward_head(lin.forward_features(x)).shape == (2,)
    with pytest.raises(ConfigError):
        MagnificationRegressor("tiny", target="sqrt")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        MagnificationRegressor("tiny", mag_range=(40, 1))


def test_paper_head_layout() -> None:
    model = MagnificationRegressor("tiny", hidden_activation="none")
    assert (model.fc1.in_features, model.fc1.out_features) == (64, 200)
    assert (model.fc2.in_features, model.fc2.out_features) == (200, 20)
    assert (model.fc3.in_features, model.fc3.out_features) == (20, 1)
    assert isinstance(model.act, torch.nn.Identity)
    assert isinstance(MagnificationRegressor("tiny").act, torch.nn.ReLU)


def test_classifier_levels() -> None:
    cls = MagnificationClassifier("tiny", levels=(40, 4, 20, 10)).eval()
    assert cls.levels == (4.0, 10.0, 20.0, 40.0)
    idx = cls.level_index(torch.tensor([3.0, 5.0, 7.0, 13.0, 25.0, 60.0]))
    assert idx.tolist() == [0, 0, 1, 1, 2, 3]
    pred = cls.predict_magnification(torch.zeros(3, 3, 32, 32))
    assert set(pred.tolist()) <= {4.0, 10.0, 20.0, 40.0}
    assert nearest_level(7.0, (4, 10, 20, 40)) == 10  # log-nearest: 7/4 > 10/7
    with pytest.raises(ConfigError):
        MagnificationClassifier("tiny", levels=(10,))


def test_recalibration_matches_the_final_model() -> None:
    model = _warmed_regressor()
    batches = [torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(200 + i)) for i in range(4)]
    model.eval()
    used = recalibrate_statistics(model, batches)
    assert used == 4
    assert not model.training and not model.asm.training
    assert model.asm.momentum == 0.1
    with torch.no_grad():  # the running scale is the mean of the four batches' scales (BN on batch stats)
        scales = []
        probe = MagnificationRegressor("tiny").eval()
        probe.load_state_dict(model.state_dict())
        for m in probe.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.train()
        for b in batches:
            h = probe.fc2(probe.act(probe.fc1(probe.backbone(b))))
            scales.append(probe.asm.batch_scale(h).item())
    assert model.asm.running_scale.item() == pytest.approx(sum(scales) / 4, rel=1e-4)
    assert int(model.asm.num_batches_tracked) == 4


def test_the_shipped_model_loads_from_the_magnification_package() -> None:
    from histomag.magnification.infer import DEFAULT_MODEL, load_estimator

    assert DEFAULT_MODEL.is_file() and DEFAULT_MODEL.parent.parent.name == "magnification"
    estimator = load_estimator("cnn")
    assert estimator.source == "shipped network" and estimator.config.crop > 0
    assert load_estimator().source == "shipped rulers"  # the default, as the CV chose
