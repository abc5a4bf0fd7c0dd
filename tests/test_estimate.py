"""Resolution recovery plumbing: tissue crops at native scale, median, mislabel warning."""

import numpy as np
import pytest

from helpers import MemorySlide, textured
from histomag.errors import NoTissueError
from histomag.magnification.estimate import MagnificationEstimate, disagreement, estimate_magnification, tissue_crops


def _slide(mpp=0.25, power=40.0):
    t = textured(1024, 1024).astype(np.float32) / 255
    rgb = np.stack([230 - 50 * t[..., 0], 110 + 70 * t[..., 1], 190 - 40 * t[..., 2]], axis=2).astype(np.uint8)
    rgb[:, 600:] = 243  # glass on the right
    return MemorySlide(rgb, mpp=mpp, objective_power=power)


def test_crops_are_native_tissue_pixels():
    s = _slide(mpp=None, power=None)  # works without any resolution
    crops = tissue_crops(s, 128, n_crops=6)
    assert len(crops) == 6 and all(c.shape == (128, 128, 3) for c in crops)
    assert all((c < 235).mean() > 0.6 for c in crops)  # on tissue, not glass
    level0 = s.levels[0]
    c = crops[0]
    hits = [(y, x) for y in range(0, 1024 - 127, 64) for x in range(0, 1024 - 127, 64)
            if np.array_equal(level0[y:y + 128, x:x + 128], c)]
    assert hits  # an exact level-0 window: no resampling before the model sees it


def test_median_and_mpp():
    s = _slide()
    calls = []

    def predict(crops):
        calls.append(len(crops))
        return [10.0, 20.0, 21.0, 19.0, 80.0][: len(crops)]

    est = estimate_magnification(s, predict, crop=128, n_crops=5)
    assert calls == [5] and est.magnification == pytest.approx(20.0) and est.mpp == pytest.approx(0.5) and est.n_crops == 5


def test_disagreement_is_reported_over_25_percent():
    s = _slide(mpp=0.25, power=40.0)
    assert disagreement(s, MagnificationEstimate(35.0, 8, 1.0)) is None
    msg = disagreement(s, MagnificationEstimate(20.0, 8, 1.0))
    assert msg and "mislabelled" in msg and "40x" in msg and "20x" in msg and "\n" not in msg
    assert disagreement(_slide(mpp=None, power=None), MagnificationEstimate(20.0, 8, 1.0)) is None


def test_no_tissue():
    glass = MemorySlide(np.full((512, 512, 3), 244, np.uint8))
    with pytest.raises(NoTissueError) as e:
        tissue_crops(glass, 128)
    assert "no tissue" in str(e.value)


def test_small_image_gives_one_whole_crop():
    s = _slide()
    small = MemorySlide(s.levels[0][:100, :150].copy(), n_levels=1)
    crops = tissue_crops(small, 224)
    assert len(crops) == 1 and crops[0].shape == (100, 150, 3)


def test_interval_calibration_covers_at_its_level():
    from histomag.magnification.estimate import IntervalCalibration

    rng = np.random.default_rng(0)

    def draw(n):
        true = np.exp(rng.uniform(np.log(2), np.log(40), n))
        mad = rng.uniform(0.02, 0.3, n)
        pred = true * np.exp(rng.normal(0, 1, n) * mad * 1.5)  # errors scale with the crops' spread
        return true, pred, mad

    cal = IntervalCalibration.fit(*draw(2000), level=0.9)
    true, pred, mad = draw(4000)
    lo, hi = cal.bounds(np.log(pred), mad)
    coverage = np.mean((np.log(true) >= lo) & (np.log(true) <= hi))
    assert 0.87 <= coverage <= 0.93
    assert IntervalCalibration.from_dict(cal.to_dict()) == cal


def test_estimate_carries_interval_and_verdict():
    from histomag.magnification.estimate import IntervalCalibration, combine, verdict

    cal = IntervalCalibration(q=2.0, level=0.9, floor=0.05)
    est = combine([19.0, 20.0, 21.0, 20.0], cal)
    lo, hi = est.interval
    assert lo < 20 < hi and est.mpp_interval[0] < 0.5 < est.mpp_interval[1]
    assert est.uncertainty_factor == pytest.approx(max(20 / lo, hi / 20), rel=0.02)
    text = est.describe()
    assert "90% interval" in text and "%" not in text.replace("90% interval", "")  # a factor, never a percentage
    assert f"×{est.uncertainty_factor:.2f}" in text and est.to_dict()["mpp_interval"][0] < 0.5
    assert verdict(None, est) == "missing" and verdict(0.5, est) == "ok" and verdict(0.25, est) == "likely wrong"
    with pytest.raises(NoTissueError):
        combine([float("nan")])


def test_crops_spread_over_the_whole_tissue():
    from histomag.magnification.estimate import rgb_tissue_crops

    rgb = np.full((1024, 1024, 3), 245, np.uint8)
    rgb[:, :512] = (150, 80, 160)   # tissue on the left half only
    crops = rgb_tissue_crops(rgb, 128, n_crops=8)
    assert len(crops) == 8 and all(c.shape == (128, 128, 3) for c in crops)
    assert all(c.mean() < 200 for c in crops)  # every crop on tissue
    with pytest.raises(NoTissueError):
        rgb_tissue_crops(np.full((512, 512, 3), 245, np.uint8), 128)


def test_interval_ignores_a_spread_that_does_not_track_the_error():
    from histomag.magnification.estimate import IntervalCalibration

    rng = np.random.default_rng(1)
    true = np.exp(rng.uniform(np.log(2), np.log(40), 3000))
    mad = rng.uniform(0.01, 0.5, true.size)           # spread unrelated to the error
    pred = true * np.exp(rng.normal(0, 0.2, true.size))
    cal = IntervalCalibration.fit(true, pred, mad)
    assert not cal.scaled and cal.q == pytest.approx(0.2 * 1.645, rel=0.1)


def test_cv_coverage_opens_below_the_ruler_floor_as_inference_does():
    """A 1.25x view the ruler reads as 3.3x (its floor) counts as covered; a 20x view read as 30x does not."""
    from histomag.magnification.estimate import IntervalCalibration
    from histomag.magnification.cv import summarise_predictions

    rows = [dict(group="g", true_magnification=t, predicted_nuclei=p, log_mad_nuclei=0.0)
            for t, p in ((1.25, 3.3), (20.0, 30.0))]
    cal = IntervalCalibration(q=0.2, scaled=False)
    (g, _all) = summarise_predictions(rows, cal, "nuclei")
    assert g["coverage"] == 0.5
    cnn_rows = [dict(group="g", true_magnification=1.25, predicted_magnification=3.3, log_mad=0.0)]
    assert summarise_predictions(cnn_rows, cal, "cnn")[0]["coverage"] == 0.0   # the CNN's interval is its own


def test_verdict_text_is_one_line_a_person_can_act_on():
    from histomag.magnification.estimate import MagnificationEstimate, verdict_text

    odds = {2.5: 0.0, 4.0: 0.0, 5.0: 0.0, 10.0: 0.02, 20.0: 0.97, 40.0: 0.01, 60.0: 0.0}
    est = MagnificationEstimate(19.0, 4, 0.0, 0.1, (15.0, 24.0), method="rulers", objectives=odds)
    wrong = verdict_text(0.25, est)  # metadata 40x
    assert wrong.startswith("metadata 40x, pixels say 20x (p = 0.97") and "check" in wrong
    assert verdict_text(0.5, est).startswith("metadata 20x agrees with the pixels (20x (p = 0.97)")
    assert "usable with --mpp estimate" in verdict_text(None, est)
    unsure = MagnificationEstimate(14.0, 1, 0.0, 0.3, (8.0, 25.0), method="rulers", objectives=odds)
    assert "cannot tell 10x from 20x" in verdict_text(None, unsure)
    assert all("\n" not in t for t in (wrong, verdict_text(None, unsure)))
