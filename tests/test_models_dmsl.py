"""MultiMagNet (DMSL and baselines), the SIM loss and the combined DMSL loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from histomag.errors import ConfigError
from histomag.dmsl.network import MultiMagNet
from histomag.dmsl.similarity import DMSLLoss, SimilarityLoss, channel_max_maps
from histomag.dmsl.similarity import DEFAULT_SIM_FORM, NORMALISED_FORMS, SIM_FORMS

N_CLASSES = 3


def _inputs(sizes: tuple[int, ...], batch: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, s, s, generator=g) for s in sizes]


def _targets(batch: int = 4) -> torch.Tensor:
    return torch.arange(batch) % N_CLASSES


def _assert_every_parameter_has_gradient(net: torch.nn.Module, only: str = "") -> None:
    checked = 0
    for name, p in net.named_parameters():
        if not name.startswith(only):
            continue
        checked += 1
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
    assert checked > 0


@pytest.mark.parametrize(
    ("mode", "mags", "sizes", "shared", "fusion"),
    [
        ("sim", (40, 20), (64, 32), False, "equal"),
        ("sim", (40, 20, 10), (64, 32, 32), False, "learned"),
        ("sim", (40, 20), (64, 32), True, "equal"),
        ("mm", (40, 20), (64, 32), False, "learned"),
        ("mscn", (20, 10), (48, 48), False, "equal"),
        ("single", (20,), (48,), False, "equal"),
    ],
)
def test_every_parameter_gets_a_gradient_from_the_full_loss(mode, mags, sizes, shared, fusion) -> None:
    torch.manual_seed(0)
    net = MultiMagNet("tiny", N_CLASSES, mags, mode=mode, shared_backbone=shared, fusion=fusion, dropout=0.1)
    loss_fn = DMSLLoss.for_mode(mode)
    assert loss_fn.sim.form == DEFAULT_SIM_FORM
    total, ce, sim = loss_fn(net(_inputs(sizes)), _targets())
    total.backward()
    _assert_every_parameter_has_gradient(net)
    assert torch.isfinite(total) and ce > 0
    assert (sim > 0) if mode == "sim" else (sim == 0)


def test_sim_alone_reaches_every_branch() -> None:
    torch.manual_seed(0)
    net = MultiMagNet("tiny", N_CLASSES, (40, 20), mode="sim")
    total, _, sim = DMSLLoss(alpha=0.0, beta=1.0)(net(_inputs((64, 32))), _targets())
    assert torch.equal(total, sim)
    total.backward()
    _assert_every_parameter_has_gradient(net, only="branches.")
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.heads.parameters())


def test_loss_without_sim_is_alpha_times_ce() -> None:
    net = MultiMagNet("tiny", N_CLASSES, (40, 20), mode="mm")
    loss_fn = DMSLLoss.for_mode(net.mode, alpha=0.7, beta=0.3)
    assert not loss_fn.use_sim and DMSLLoss.for_mode("sim").use_sim
    out = net(_inputs((64, 32)))
    total, ce, sim = loss_fn(out, _targets())
    assert sim == 0 and torch.allclose(total, 0.7 * ce)
    assert torch.allclose(ce, F.nll_loss(torch.log(out["probs"]), _targets()), atol=1e-5)


def test_loss_with_sim_combines_alpha_ce_and_beta_sim() -> None:
    net = MultiMagNet("tiny", N_CLASSES, (40, 20), mode="sim")
    out = net(_inputs((64, 32)))
    total, ce, sim = DMSLLoss(alpha=0.25, beta=2.0, sim_form="paper")(out, _targets())
    assert torch.allclose(sim, SimilarityLoss("paper")(out["feature_maps"]))
    assert torch.allclose(total, 0.25 * ce + 2.0 * sim)


def test_nll_is_clamped_for_zero_probabilities() -> None:
    log_probs = torch.tensor([[0.0, -math.inf], [-math.inf, 0.0]])
    total, ce, _ = DMSLLoss(use_sim=False, eps=1e-8)({"log_probs": log_probs}, torch.tensor([1, 1]))
    assert torch.isfinite(ce) and ce.item() == pytest.approx(-math.log(1e-8) / 2, rel=1e-5)


# --- fusion -------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["equal", "learned"])
def test_fused_probabilities_sum_to_one_and_match_weighted_softmax(fusion: str) -> None:
    net = MultiMagNet("tiny", N_CLASSES, (40, 20, 10), mode="sim", fusion=fusion)
    if fusion == "learned":
        with torch.no_grad():
            net.fusion_logits.copy_(torch.tensor([2.0, -1.0, 0.5]))
        assert isinstance(net.fusion_logits, torch.nn.Parameter)
    else:
        assert "fusion_logits" not in dict(net.named_parameters())
        assert torch.allclose(net.fusion_weights, torch.full((3,), 1 / 3))
    w = net.fusion_weights
    assert w.shape == (3,) and torch.allclose(w.sum(), torch.tensor(1.0))
    out = net(_inputs((64, 32, 32)))
    assert torch.allclose(out["probs"].sum(dim=1), torch.ones(4), atol=1e-5)
    manual = sum(w[m] * torch.softmax(lg, dim=1) for m, lg in enumerate(out["logits"]))
    assert torch.allclose(out["probs"], manual, atol=1e-6)
    assert torch.allclose(out["log_probs"], torch.log(manual), atol=1e-5)


def test_log_probs_stay_finite_for_extreme_logits() -> None:
    net = MultiMagNet("tiny", N_CLASSES, (40, 20))
    feats = [torch.randn(2, 64, 2, 2) * 1e4, torch.randn(2, 64, 1, 1) * 1e4]
    out = net.forward_head(feats)
    assert torch.isfinite(out["log_probs"]).all()
    assert torch.allclose(out["probs"].sum(dim=1), torch.ones(2), atol=1e-5)


# --- structure of the modes ---------------------------------------------------------------


def test_sim_net_has_one_branch_and_head_per_magnification_and_mixed_pixel_sizes() -> None:
    net = MultiMagNet("tiny", N_CLASSES, (40, 20))
    assert len(net.branches) == 2 and len(net.heads) == 2 and net.mode == "sim"
    out = net(_inputs((64, 32), batch=2))
    assert [tuple(f.shape) for f in out["feature_maps"]] == [(2, 64, 4, 4), (2, 64, 2, 2)]
    assert [tuple(p.shape) for p in out["pooled"]] == [(2, 64), (2, 64)]
    assert [tuple(lg.shape) for lg in out["logits"]] == [(2, N_CLASSES)] * 2
    assert net.branch(0) is not net.branch(1)


def test_shared_backbone_uses_one_branch_for_all_magnifications() -> None:
    net = MultiMagNet("tiny", N_CLASSES, (40, 20, 10), shared_backbone=True)
    assert len(net.branches) == 1 and len(net.heads) == 3
    assert net.branch(0) is net.branch(2)
    assert net.layer_name(2, "low") == "branches.0.stem.0"


def test_mscn_concatenates_features_into_one_head() -> None:
    net = MultiMagNet("tiny", N_CLASSES, (20, 10, 5), mode="mscn")
    assert len(net.branches) == 3 and len(net.heads) == 1
    assert net.heads[0].in_features == 3 * 64
    out = net(_inputs((48, 48, 48), batch=2))
    assert len(out["logits"]) == 1
    assert torch.allclose(out["probs"], torch.softmax(out["logits"][0], dim=1))
    assert torch.allclose(net.fusion_weights, torch.ones(1))


def test_single_mode_takes_one_input_even_a_bare_tensor() -> None:
    net = MultiMagNet("tiny", N_CLASSES, (20,), mode="single")
    assert len(net.branches) == 1 and len(net.heads) == 1
    x = torch.randn(2, 3, 40, 40)
    out = net(x)
    assert torch.allclose(out["probs"], torch.softmax(out["logits"][0], dim=1))
    assert torch.allclose(net([x])["log_probs"], out["log_probs"])


def test_layer_names_resolve_to_each_branch() -> None:
    net = MultiMagNet("tiny", N_CLASSES, (40, 20))
    assert net.get_submodule(net.layer_name(1, "high")) is net.branches[1].stage3
    assert isinstance(net.get_submodule(net.layer_name(0, "low")), torch.nn.Conv2d)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"magnifications": (40, 20), "mode": "single"}, "exactly one"),
        ({"magnifications": (40,), "mode": "sim"}, "at least two"),
        ({"magnifications": (20, 10), "mode": "mscn", "fusion": "learned"}, "sim and mm"),
        ({"magnifications": (40, 20), "mode": "dmsl"}, "unknown mode"),
        ({"magnifications": (40, 0), "mode": "sim"}, "> 0"),
        ({"magnifications": (40, 20), "dropout": 1.0}, "dropout"),
        ({"magnifications": (40, 20), "n_classes": 1}, "n_classes"),
    ],
)
def test_bad_configurations_raise_config_error(kwargs: dict, match: str) -> None:
    kwargs = {"n_classes": N_CLASSES, **kwargs}
    with pytest.raises(ConfigError, match=match):
        MultiMagNet("tiny", **kwargs)


def test_wrong_number_of_inputs_and_unknown_backbone() -> None:
    net = MultiMagNet("tiny", N_CLASSES, (40, 20))
    with pytest.raises(ConfigError, match="expects 2 input"):
        net(_inputs((64,)))
    with pytest.raises(ConfigError, match="tiny"):
        MultiMagNet("tiny_typo", N_CLASSES, (40, 20))


# --- SIM ----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", SIM_FORMS)
def test_sim_is_zero_for_identical_branch_inputs(form: str) -> None:
    torch.manual_seed(0)
    net = MultiMagNet("tiny", N_CLASSES, (40, 20), mode="sim", shared_backbone=True)
    x = torch.randn(2, 3, 64, 64)
    out = net([x, x.clone()])
    assert SimilarityLoss(form)(out["feature_maps"]).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("form", SIM_FORMS)
def test_sim_is_symmetric_and_positive_for_different_maps(form: str) -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 8, 4, 4, generator=g)
    b = torch.rand(3, 16, 2, 2, generator=g)
    c = torch.randn(3, 4, 4, 4, generator=g)
    sim = SimilarityLoss(form)
    assert torch.allclose(sim([a, b]), sim([b, a]))
    assert torch.allclose(sim([a, b, c]), sim([c, a, b]))
    assert sim([a, b]) > 0


def test_paper_and_l1_forms_differ_when_sums_match_but_layouts_differ() -> None:
    a = torch.zeros(1, 2, 2, 2)
    b = torch.zeros(1, 3, 2, 2)
    a[0, 1, 0, 0] = 1.0  # evidence top-left
    b[0, 2, 1, 1] = 1.0  # same amount of evidence, bottom-right
    assert SimilarityLoss("paper")([a, b]).item() == 0.0
    assert SimilarityLoss("l1")([a, b]).item() == pytest.approx(2 / 4)


def test_sim_pools_to_the_smallest_map_and_averages_pairs() -> None:
    g = torch.Generator().manual_seed(2)
    shapes = [(2, 5, 8, 6), (2, 7, 4, 3), (2, 3, 2, 6)]
    maps = [torch.rand(*shape, generator=g) for shape in shapes]
    maxima = channel_max_maps(maps)
    assert [tuple(m.shape) for m in maxima] == [(2, 2 * 3)] * 3
    expected_max = F.adaptive_avg_pool2d(maps[0], (2, 3)).amax(dim=1).flatten(1)
    assert torch.allclose(maxima[0], expected_max)
    pairs = [(0, 1), (0, 2), (1, 2)]
    per_sample = torch.stack([(maxima[i] - maxima[j]).abs().mean(1) for i, j in pairs]).mean(0)
    assert torch.allclose(SimilarityLoss("l1", reduction="none")(maps), per_sample)
    assert torch.allclose(SimilarityLoss("l1", reduction="sum")(maps), per_sample.sum())
    assert torch.allclose(SimilarityLoss("l1")(maps), per_sample.mean())


def test_sim_scale_does_not_depend_on_map_size() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 4, 3, 3, generator=g), torch.rand(2, 4, 3, 3, generator=g)
    up = lambda t: F.interpolate(t, scale_factor=4, mode="nearest")  # noqa: E731
    for form in SIM_FORMS:
        assert torch.allclose(SimilarityLoss(form)([a, b]), SimilarityLoss(form)([up(a), up(b)]), atol=1e-6)
    assert torch.allclose(SimilarityLoss("l1", pool_size=1)([a, b]), SimilarityLoss("l1", pool_size=(1, 1))([up(a), b]))


def test_sim_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="at least two"):
        SimilarityLoss()([torch.rand(1, 2, 2, 2)])
    with pytest.raises(ConfigError, match="unknown SIM form"):
        SimilarityLoss("l2")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch sizes"):
        SimilarityLoss()([torch.rand(1, 2, 2, 2), torch.rand(2, 2, 2, 2)])


# --- normalised SIM forms (corr, dist) ------------------------------------------------------


@pytest.mark.parametrize("form", SIM_FORMS)
def test_every_parameter_gets_a_gradient_with_each_sim_form(form: str) -> None:
    torch.manual_seed(0)
    net = MultiMagNet("tiny", N_CLASSES, (40, 20, 10), mode="sim", fusion="learned", dropout=0.1)
    total, _, sim = DMSLLoss(sim_form=form)(net(_inputs((64, 32, 32))), _targets())
    total.backward()
    _assert_every_parameter_has_gradient(net)
    assert torch.isfinite(total) and sim > 0


@pytest.mark.parametrize("form", NORMALISED_FORMS)
def test_sim_alone_reaches_every_branch_with_normalised_forms(form: str) -> None:
    torch.manual_seed(0)
    net = MultiMagNet("tiny", N_CLASSES, (40, 20), mode="sim")
    _, _, sim = DMSLLoss(alpha=0.0, beta=1.0, sim_form=form)(net(_inputs((64, 32))), _targets())
    sim.backward()
    _assert_every_parameter_has_gradient(net, only="branches")


@pytest.mark.parametrize("form", NORMALISED_FORMS)
@pytest.mark.parametrize("scale", [1e-3, 0.1, 7.0, 1e3])
def test_normalised_forms_ignore_scaling_either_map(form: str, scale: float) -> None:
    """Shrinking (or inflating) a branch's activations cannot lower the normalised forms."""
    g = torch.Generator().manual_seed(4)
    a = torch.rand(3, 8, 4, 4, generator=g)
    b = torch.rand(3, 16, 4, 4, generator=g)
    sim = SimilarityLoss(form, reduction="none")
    base = sim([a, b])
    assert torch.allclose(sim([scale * a, b]), base, atol=1e-5)
    assert torch.allclose(sim([a, scale * b]), base, atol=1e-5)
    assert torch.allclose(sim([scale * a, scale * b]), base, atol=1e-5)
    assert torch.allclose(sim([a + 3.0, b - 1.0]), base, atol=1e-5)  # nor can shifting them
    # the raw forms, by contrast, are lowered by shrinking both maps
    assert SimilarityLoss("l1")([1e-3 * a, 1e-3 * b]) < 1e-2 * SimilarityLoss("l1")([a, b])


@pytest.mark.parametrize("form", NORMALISED_FORMS)
def test_normalised_forms_are_zero_for_identical_layouts_and_positive_otherwise(form: str) -> None:
    g = torch.Generator().manual_seed(5)
    a = torch.rand(2, 1, 3, 3, generator=g)  # one channel: the channel-max map is the map itself
    sim = SimilarityLoss(form, reduction="none")
    assert torch.allclose(sim([a, a.clone()]), torch.zeros(2), atol=1e-6)
    assert torch.allclose(sim([a, 2.5 * a + 1.0]), torch.zeros(2), atol=1e-5)  # same layout, other scale
    moved = torch.roll(a, shifts=1, dims=3)
    assert (sim([a, moved]) > 1e-3).all()
    assert (sim([a, -a]) > sim([a, moved])).all()  # the opposite layout is the worst


def test_corr_form_is_one_minus_pearson_correlation() -> None:
    g = torch.Generator().manual_seed(6)
    a, b = torch.rand(3, 5, 4, 4, generator=g), torch.rand(3, 2, 2, 2, generator=g)
    ma, mb = channel_max_maps([a, b])
    expected = torch.stack([1 - torch.corrcoef(torch.stack([x, y]))[0, 1] for x, y in zip(ma, mb)])
    assert torch.allclose(SimilarityLoss("corr", reduction="none")([a, b]), expected, atol=1e-5)
    anti = torch.zeros(1, 1, 1, 2)
    anti[0, 0, 0, 0] = 1.0
    assert SimilarityLoss("corr")([anti, anti.flip(-1)]).item() == pytest.approx(2.0)
    assert SimilarityLoss("dist")([anti, anti.flip(-1)]).item() < 1.0


def test_normalised_forms_are_finite_for_flat_maps_and_refuse_a_single_location() -> None:
    flat = torch.zeros(2, 3, 4, 4, requires_grad=True)
    other = torch.rand(2, 3, 4, 4)
    for form in NORMALISED_FORMS:
        loss = SimilarityLoss(form)([flat, other])
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(flat.grad).all()
        with pytest.raises(ConfigError, match="single location"):
            SimilarityLoss(form, pool_size=1)([other, other])


def test_loss_takes_a_per_batch_beta() -> None:
    net = MultiMagNet("tiny", N_CLASSES, (40, 20), mode="sim")
    out = net(_inputs((64, 32)))
    loss_fn = DMSLLoss(alpha=0.5, beta=0.5)
    total, ce, sim = loss_fn(out, _targets(), beta=0.1)
    assert torch.allclose(total, 0.5 * ce + 0.1 * sim)
    total0, ce0, _ = loss_fn(out, _targets(), beta=0.0)
    assert torch.allclose(total0, 0.5 * ce0)


def test_branch_ce_adds_the_mean_per_branch_ce() -> None:
    logits = [torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.5, 0.0], [0.0, -1.0]])]
    log_probs = torch.logsumexp(torch.stack([F.log_softmax(lg, 1) + math.log(0.5) for lg in logits]), 0)
    y = torch.tensor([0, 1])
    out = {"logits": logits, "log_probs": log_probs}
    fused, _, _ = DMSLLoss(alpha=0.5, use_sim=False)(out, y)
    deep, ce, _ = DMSLLoss(alpha=0.5, use_sim=False, branch_ce=2.0)(out, y)
    branch = (F.cross_entropy(logits[0], y) + F.cross_entropy(logits[1], y)) / 2
    assert ce.item() == pytest.approx(F.nll_loss(log_probs, y).item())  # the logged CE stays the fused one
    assert deep.item() == pytest.approx(fused.item() + 0.5 * 2.0 * branch.item(), rel=1e-6)
    single = {"logits": logits[:1], "log_probs": F.log_softmax(logits[0], 1)}  # one head: no branch term
    assert DMSLLoss(use_sim=False, branch_ce=2.0)(single, y)[0].item() == pytest.approx(
        DMSLLoss(use_sim=False)(single, y)[0].item())
    with pytest.raises(ConfigError, match="branch_ce=-1"):
        DMSLLoss(branch_ce=-1)


def test_fused_ce_starves_the_lagging_branch_and_branch_ce_feeds_it() -> None:
    """Why deep supervision: under the fused CE alone, a branch that is behind gets a small gradient."""
    y = torch.zeros(8, dtype=torch.long)
    ahead = torch.tensor([[4.0, -4.0]]).repeat(8, 1)  # already sure and right
    behind = torch.zeros(8, 2, requires_grad=True)  # undecided

    def grad_of(loss: DMSLLoss) -> float:
        behind.grad = None
        lp = torch.logsumexp(torch.stack([F.log_softmax(ahead, 1), F.log_softmax(behind, 1)]) + math.log(0.5), 0)
        loss({"logits": [ahead, behind], "log_probs": lp}, y)[0].backward()
        return float(behind.grad.norm())

    starved, fed = grad_of(DMSLLoss(use_sim=False)), grad_of(DMSLLoss(use_sim=False, branch_ce=1.0))
    behind.grad = None
    (0.5 * F.cross_entropy(behind, y)).backward()  # what the branch would learn alone (alpha = 0.5)
    alone = float(behind.grad.norm())
    # its share of the fused p(y) is 0.5 * 0.5 / 0.75 = 1/3: a third of the signal it would get alone
    assert starved == pytest.approx(alone / 3, rel=1e-3)
    assert fed == pytest.approx(starved + alone / 2, rel=1e-3) and fed > 2 * starved
