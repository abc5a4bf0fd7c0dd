"""The stacking analysis (benchmarks/magnification_stacking.py) never lets a fold's labels steer its own prediction."""

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "magnification_stacking", Path(__file__).resolve().parents[1] / "benchmarks" / "magnification_stacking.py")
stacking = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stacking)


def _cv(rng, n=60):
    true = rng.uniform(np.log(2), np.log(40), n)
    return {"fold": np.repeat(np.arange(3), n // 3), "group": np.repeat(np.array(["a", "b", "c"]), n // 3),
            "true": true, "cnn": 0.5 * true + 1.0 + rng.normal(0, 0.1, n),
            "ruler": np.where(np.arange(n) % 7 == 0, np.nan, true + rng.normal(0, 0.2, n))}


def test_nested_fits_ignore_the_held_out_labels():
    rng = np.random.default_rng(0)
    d = _cv(rng)
    before = stacking.nested_predictions(d)
    d2 = dict(d, true=np.where(d["fold"] == 0, d["true"] + 5.0, d["true"]))   # change fold 0's labels only
    after = stacking.nested_predictions(d2)
    for m in stacking.METHODS:
        assert np.allclose(before[m][d["fold"] == 0], after[m][d["fold"] == 0]), m
        assert not np.allclose(before[m][d["fold"] == 1], after[m][d["fold"] == 1]) or m in ("cnn_tta", "ruler", "geomean")


def test_recalibration_undoes_a_compressed_slope_and_failed_ruler_falls_back():
    rng = np.random.default_rng(1)
    d = _cv(rng)
    preds = stacking.nested_predictions(d)
    err = {m: stacking.median_rel_error(d["true"], p) for m, p in preds.items()}
    assert err["cnn_recal"] < 0.5 * err["cnn_tta"]            # slope 0.5 mapped back
    failed = ~np.isfinite(d["ruler"])
    assert np.array_equal(preds["ruler"][failed], d["cnn"][failed])
    assert np.all(np.isfinite(preds["stack"])) and np.all(np.isfinite(preds["weighted"]))
