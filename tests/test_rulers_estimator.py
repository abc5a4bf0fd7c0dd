"""The rulers' estimator: scale-following estimates, objective odds, pooled acquisitions, refusals,
the evidence picture, and the lymphocyte ruler on synthetic tissue of known scale."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from helpers import nuclei_image
from histomag.errors import NoTissueError
from histomag.magnification.rulers.base import RULERS
from histomag.magnification.rulers.calibration import CueCalibration, RulerCalibration
from histomag.magnification.rulers.estimator import RulerEstimator, load_ruler_estimator


def _estimator(prior_um: float) -> RulerEstimator:
    return RulerEstimator(RulerCalibration({"nuclei": CueCalibration(prior_um, 0.15)}, 0.05, q=2.0))


@pytest.fixture(scope="module")
def tissue():
    """Synthetic nuclei of 7 µm at 0.25 µm/px (40x), and the same tissue at 20x."""
    rng = np.random.default_rng(3)
    rgb = nuclei_image(1024, 1024, 0.25, rng)
    half = np.asarray(Image.fromarray(rgb).resize((512, 512), Image.Resampling.BOX))
    return rgb, half


def test_the_estimate_follows_the_scale(tissue):
    rgb, half = tissue
    est = _estimator(7.0)
    full, coarse = est.estimate_rgb(rgb), est.estimate_rgb(half)
    assert full.magnification / coarse.magnification == pytest.approx(2.0, rel=0.08)
    lo, hi = full.interval
    assert lo < full.magnification < hi
    assert full.method == "rulers" and full.cues["nuclei"]["fields"] == full.n_crops >= 1


def test_objective_odds_and_describe_speak_in_factors(tissue):
    rgb, _ = tissue
    prior = 7.0 * 1.0  # the nuclei ruler reads these discs near their true 7 µm
    est = _estimator(prior).estimate_rgb(rgb)
    assert sum(est.objectives.values()) == pytest.approx(1.0)
    assert est.most_likely_objective in (20.0, 40.0, 60.0)
    text = est.describe()
    assert "most likely objective" in text and "×" in text and "%" not in text.replace("90% interval", "")
    d = est.to_dict()
    assert d["objective"] == est.most_likely_objective and d["uncertainty_factor"] >= 1.0
    assert set(d["objective_probabilities"]) == {"2.5", "4", "5", "10", "20", "40", "60"}


def test_blank_image_has_nothing_to_measure():
    blank = np.full((600, 600, 3), 240, np.uint8)
    blank[100:500, 100:500] = (230, 150, 190)  # pink tissue, no nuclei
    with pytest.raises(NoTissueError) as info:
        _estimator(7.0).estimate_rgb(blank, name="blank.png")
    msg = str(info.value)
    assert msg.startswith("blank.png") and "nothing to measure" in msg and "\n" not in msg


def test_a_declared_acquisition_pools_into_a_narrower_interval(tmp_path):
    rng = np.random.default_rng(5)
    paths = []
    for i in range(4):
        p = tmp_path / f"snap{i}.png"
        Image.fromarray(nuclei_image(700, 700, 0.5, rng)).save(p)
        paths.append(p)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    est = RulerEstimator(RulerCalibration({"nuclei": CueCalibration(7.0, 0.2)}, 0.02, q=2.0))
    single = est.estimate_file(paths[0])
    pooled, errors = est.estimate_group(paths + [tmp_path / "broken.png"])
    assert list(errors) == [str(tmp_path / "broken.png")]  # one bad file is named, the rest pool
    assert pooled.n_images == 4 and pooled.n_crops == 4
    assert pooled.uncertainty_factor < single["uncertainty_factor"]
    assert pooled.magnification == pytest.approx(single["magnification"], rel=0.1)


def test_refusal_names_the_two_objectives_and_serves_otherwise():
    from histomag.magnification.estimate import MagnificationEstimate
    from histomag.magnification.infer import refusal

    ambiguous = MagnificationEstimate(14.0, 4, 0.0, 0.2, (9.0, 22.0), method="rulers")
    msg = refusal("a.png", ambiguous)
    assert msg.startswith("a.png:") and "10x from 20x" in msg and "mpp=" in msg
    usable = MagnificationEstimate(18.0, 4, 0.0, 0.1, (14.0, 23.0), method="rulers")
    assert refusal("b.png", usable) is None
    assert "×1.2" in refusal("b.png", usable, max_uncertainty=1.2)


def test_the_shipped_calibration_loads_and_states_its_cv():
    est = load_ruler_estimator()
    assert est.cues and all(c.prior_um > 3 for c in est.calibration.cues.values())
    from histomag.magnification.rulers.estimator import DEFAULT_CALIBRATION

    cv = json.loads(DEFAULT_CALIBRATION.read_text())["cv"]
    assert cv["chosen"] == est.cues and cv["scores"]


def test_a_broken_calibration_is_one_line(tmp_path):
    from histomag.errors import CheckpointError

    bad = tmp_path / "rulers.json"
    bad.write_text("{}")
    with pytest.raises(CheckpointError, match="not a rulers' calibration"):
        load_ruler_estimator(bad)


def test_evidence_picture(tissue):
    from histomag.report.evidence import evidence_png

    rgb, _ = tissue
    ev = _estimator(7.0).evidence(rgb, "tissue.png")
    assert ev.readings["nuclei"].n >= 20 and ev.readings["nuclei"].objects.shape[1] == 3
    png = evidence_png(ev)
    im = Image.open(__import__("io").BytesIO(png))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and im.width >= 1000


def test_lymphocyte_ruler_reads_a_uniform_dense_population_and_none_without_one(tissue):
    rgb, _ = tissue
    r = RULERS.get("lymphocytes")(rgb)
    # uniform dense discs of 7 µm = 28 px: the dense population is found, at about their size
    assert r.size_px is not None and r.size_px == pytest.approx(28, rel=0.2) and r.n >= 15
    blank = np.full((400, 400, 3), 235, np.uint8)
    none = RULERS.get("lymphocytes")(blank)
    assert none.size_px is None and none.reason


def test_nuclei_reading_is_scale_free(tissue):
    rgb, half = tissue
    a, b = RULERS.get("nuclei")(rgb), RULERS.get("nuclei")(half)
    assert a.size_px / b.size_px == pytest.approx(2.0, rel=0.08)
    assert math.isfinite(a.spread) and a.objects.shape == (a.n, 3)


def test_nuclei_at_the_pixel_floor_give_an_upper_bound_that_is_refused():
    from histomag.magnification.infer import refusal

    rgb = nuclei_image(900, 900, 2.6, np.random.default_rng(1))  # 7 µm nuclei of about 2.7 px: 3.8x
    reading = RULERS.get("nuclei")(rgb)
    assert reading.size_px is None and reading.at_floor and "floor" in reading.reason
    est = _estimator(7.0).estimate_rgb(rgb, name="tiny.png")
    assert est.interval[0] == 1.0 and est.interval[1] == pytest.approx(10 * 4 / 7.0)
    assert "floor" in est.caveat and "floor" in est.describe()
    assert "cannot tell 2.5x from 5x" in refusal("tiny.png", est)


@pytest.mark.parametrize("key, value", [("q", float("nan")), ("systematic", -0.1), ("field", 0), ("level", 1.5),
                                        ("prior_um", -1.0), ("tau", float("inf"))])
def test_a_calibration_with_values_out_of_range_is_refused_in_one_line(tmp_path, key, value) -> None:
    import json

    from histomag.errors import CheckpointError
    from histomag.magnification.rulers.estimator import DEFAULT_CALIBRATION, load_ruler_calibration

    data = json.loads(DEFAULT_CALIBRATION.read_text())
    if key in ("prior_um", "tau"):
        data["cues"][next(iter(data["cues"]))][key] = value
    else:
        data[key] = value
    path = tmp_path / "rulers.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=f"is not a rulers' calibration .*{key}"):
        load_ruler_calibration(path)
