"""The shipped rulers on real fields (skipped without ../shared/data): acquisition must not move an
estimate (blur, JPEG, stain, noise within 10%; sharpening is a known gap, strictly expected to fail),
and camera snapshots pooled as one acquisition are served near the truth."""

import csv
import math

import numpy as np
import pytest
from PIL import Image

from histomag.magnification.acquisition import gaussian_blur, jpeg_again, sensor_noise, stain_shift, unsharp
from histomag.magnification.rulers.estimator import load_ruler_estimator

#: a few fields from every real source kind: scanner 40x and 20x, two cameras at several objectives
FIELDS = [("monuseg", "images/TCGA-18-5592-01Z-00-DX1.png", 0.25), ("monuseg", "images/TCGA-B0-5710-01Z-00-DX1.png", 0.25),
          ("monuseg", "images/TCGA-21-5784-01Z-00-DX1.png", 0.25), ("cpm15", "images/image04.png", 0.5),
          ("cpm15", "images/image06.png", 0.5), ("breakhis", "images/SOB_B_F-14-14134E-100-001.png", 1.0),
          ("breakhis", "images/SOB_M_DC-14-10926-100-001.png", 1.0)]


def _load(root, folder, name):
    im = Image.open(root / folder / name).convert("RGB")
    return np.asarray(im)


def _bach(root, n=3):
    with open(root / "bach" / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))[::80][:n]
    out = []
    for r in rows:
        im = Image.open(root / "bach" / r["image"]).convert("RGB")
        # pixels 0.56 µm wide, 0.42 µm tall: square them at 0.56 µm/px
        out.append(np.asarray(im.resize((im.width, round(im.height * 0.42 / 0.56)), Image.Resampling.LANCZOS)))
    return out


@pytest.fixture(scope="module")
def real_fields():
    from conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    fields = [_load(SHARED_DATA, f, n) for f, n, _ in FIELDS] + _bach(SHARED_DATA)
    est = load_ruler_estimator()
    base = [est.estimate_rgb(f).magnification for f in fields]
    return est, fields, base


def _moves(real_fields, transform):
    est, fields, base = real_fields
    return np.array([abs(math.log(est.estimate_rgb(transform(f)).magnification / b)) for f, b in zip(fields, base)])


@pytest.mark.parametrize("transform", [gaussian_blur, jpeg_again, stain_shift, sensor_noise],
                         ids=["blur-1px", "jpeg-q70", "stain", "noise"])
def test_acquisition_moves_the_median_estimate_less_than_10_percent(real_fields, transform):
    moves = _moves(real_fields, transform)
    assert np.median(moves) < math.log(1.10), np.exp(moves)


@pytest.mark.xfail(strict=True, reason="known gap (docs/magnification-real.md): an unsharp mask moves about a third of "
                   "images by more than 10%: sharpened chromatin is taken for small nuclei")
def test_sharpening_moves_no_field_more_than_10_percent(real_fields):
    moves = _moves(real_fields, unsharp)
    assert np.mean(moves > math.log(1.10)) <= 0.1, np.exp(moves)


def test_bach_snapshots_pooled_as_one_acquisition_are_served_near_the_truth(real_fields):
    from histomag.magnification.infer import refusal

    est, fields, _ = real_fields
    readings = [r for i, rgb in enumerate(fields[len(FIELDS):]) for r in est.readings_rgb(rgb, f"bach{i}")]
    pooled = est.estimate_readings(readings, "bach")
    singles = [est.estimate_rgb(rgb) for rgb in fields[len(FIELDS):]]
    assert pooled.n_images == 3 and pooled.uncertainty_factor < min(e.uncertainty_factor for e in singles)
    assert refusal("bach", pooled) is None, pooled.describe()
    assert abs(math.log(pooled.magnification / 17.857)) < math.log(1.25), pooled.describe()  # truth 17.9x
