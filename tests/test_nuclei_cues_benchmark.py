"""The cue analysis of benchmarks/nuclei_eval.py: a real cue is found, and a group's own sizes never set its prediction."""

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "nuclei_eval", Path(__file__).resolve().parents[1] / "benchmarks" / "nuclei_eval.py")
nuclei_eval = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nuclei_eval)


def _rows(rng, true_um):
    rows = []
    for g in nuclei_eval.GROUPS:
        for i in range(8):
            spread = rng.uniform(0.2, 0.5)
            um = true_um(spread)
            mpp = rng.uniform(0.2, 0.6)
            rows.append(dict(group=g, name=f"{g}{i}", factor=1, mpp=mpp, size=um / mpp, um=um,
                             spread=spread, packing=rng.uniform(0.1, 0.3)))
    return rows


def test_a_cue_that_sets_the_size_is_found_and_a_constant_prior_is_not_fooled():
    rng = np.random.default_rng(0)
    rows = _rows(rng, lambda s: 7.0 * np.exp(2.0 * (s - 0.35)))     # bigger spread, bigger nuclei
    with_cue = nuclei_eval.logo_cue_errors(rows, ("spread",))
    constant = nuclei_eval.logo_cue_errors(rows, ())
    assert max(with_cue.values()) < 1e-6
    assert min(constant.values()) > 0.05


def test_a_held_out_groups_sizes_never_steer_its_prediction():
    rng = np.random.default_rng(1)
    rows = _rows(rng, lambda s: 7.0 + 0.0 * s)
    before = nuclei_eval.logo_cue_errors(rows, ("spread", "packing"))
    shifted = [dict(r, um=r["um"] * 3.0) if r["group"] == "BACH" else r for r in rows]   # only BACH's truth moves
    after = nuclei_eval.logo_cue_errors(shifted, ("spread", "packing"))
    assert after["BACH"] == before["BACH"]
    assert after["MoNuSeg"] != before["MoNuSeg"]
