"""Pooling evidence across fields and cues, objective probabilities, and the rulers' calibration."""

import math

import numpy as np
import pytest

from histomag.magnification.rulers.calibration import (CueCalibration, FieldReading, RulerCalibration,
                                                      cross_validate, fit_cues)
from histomag.magnification.rulers.evidence import (STANDARD_OBJECTIVES, Evidence, ambiguous_objectives,
                                                   objective_probabilities, pool)


def _ev(values, var=0.04, cue="nuclei"):
    return [Evidence(cue, math.log(v), var, 30, f"f{i}") for i, v in enumerate(values)]


def test_pool_equal_variances_is_the_mean_of_logs():
    p = pool(_ev([10, 20, 40]))
    assert math.exp(p.centre) == pytest.approx(20.0, rel=1e-6)


def test_pool_weights_by_inverse_variance():
    ev = [Evidence("a", math.log(10), 0.01), Evidence("b", math.log(11), 0.09)]
    p = pool(ev)
    # weights 100 and 11.1 (the readings agree within their errors: no down-weighting)
    expected = (100 * math.log(10) + (1 / 0.09) * math.log(11)) / (100 + 1 / 0.09)
    assert p.centre == pytest.approx(expected, abs=0.005)


def test_one_failed_field_cannot_decide():
    good = [20 * math.exp(d) for d in (0.05, -0.04, 0.02, 0.0, -0.03, 0.04)]
    clean = pool(_ev(good))
    spoiled = pool(_ev(good + [90.0]))  # a blunder by a factor 4.5
    assert abs(spoiled.centre - clean.centre) < 0.01
    assert spoiled.weights[-1] == 0.0


def test_standard_error_narrows_with_evidence_down_to_the_systematic_floor():
    rng = np.random.default_rng(0)
    se = []
    for n in (4, 16, 64, 256):
        vals = 20 * np.exp(rng.normal(0, 0.2, n))
        se.append(pool(_ev(vals), systematic=0.05).se)
    assert se == sorted(se, reverse=True)
    assert se[0] > 2 * se[-1] * 0.9
    assert se[-1] >= 0.05


def test_pool_needs_evidence():
    with pytest.raises(ValueError):
        pool([])


def test_objective_probabilities_sum_to_one_and_peak_at_the_nearest():
    p = objective_probabilities(math.log(19.0), 0.1)
    assert sum(p.values()) == pytest.approx(1.0)
    assert max(p, key=p.get) == 20.0
    assert p[20.0] > 0.99
    flat = objective_probabilities(math.log(14.0), 0.6)
    assert max(flat.values()) < 0.6  # a wide error spreads the odds over 10x and 20x
    assert set(p) == set(STANDARD_OBJECTIVES)


@pytest.mark.parametrize("interval,expected", [
    ((14.0, 23.0), None),          # holds 20x only: usable
    ((9.0, 21.0), (10.0, 20.0)),   # 10x and 20x: cannot tell them apart
    ((3.5, 6.0), None),            # 4x and 5x are close: not a factor 2
    ((3.5, 11.0), (4.0, 10.0)),
    ((11.0, 18.0), None),          # no objective inside: a camera's own magnification
])
def test_ambiguous_objectives(interval, expected):
    assert ambiguous_objectives(interval) == expected


def _synthetic_readings(seed=0, groups=("a", "b", "c", "d", "e"), per_group=12, fields=4, prior=7.0,
                        tau=0.15, group_sd=0.05):
    rng = np.random.default_rng(seed)
    out = []
    for g in groups:
        offset = rng.normal(0, group_sd)
        for i in range(per_group):
            mag = float(np.exp(rng.uniform(math.log(5), math.log(40))))
            for _ in range(fields):
                size_um = prior * math.exp(offset + rng.normal(0, tau))
                out.append(FieldReading(f"{g}/{i}", "nuclei", size_um * mag / 10.0, 40, 0.2, g, mag))
    return out


def test_fit_cues_recovers_the_prior_and_the_spread():
    cal = fit_cues(_synthetic_readings(group_sd=0.0), ["nuclei"])
    assert cal.cues["nuclei"].prior_um == pytest.approx(7.0, rel=0.05)
    assert cal.cues["nuclei"].tau == pytest.approx(0.15, abs=0.04)


def test_fields_with_too_few_objects_give_no_evidence():
    cal = RulerCalibration({"nuclei": CueCalibration(7.0, 0.2, 20)}, 0.05)
    assert cal.evidence(FieldReading("x", "nuclei", 14.0, 5, 0.2)) is None
    assert cal.evidence(FieldReading("x", "nuclei", None, 0, 0.0)) is None
    ev = cal.evidence(FieldReading("x", "nuclei", 14.0, 40, 0.2))
    assert math.exp(ev.log_mag) == pytest.approx(20.0)


def test_cross_validation_calibrates_the_interval():
    readings = _synthetic_readings(seed=1, groups=tuple("abcdefgh"))
    held, cal, _ = cross_validate(readings, {g: g for g in "abcdefgh"}, ["nuclei"])
    assert len(held) == 8 * 12
    inside = [abs(math.log(h.magnification / h.true_magnification)) <= cal.q * h.se for h in held]
    assert 0.85 <= np.mean(inside) <= 1.0
    again = RulerCalibration.from_dict(cal.to_dict())
    assert again == cal
