"""The two-scale synthetic cohort: nuclear detail only at 40x, arrangement across the field; both needed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histomag.errors import ConfigError
from histomag.synth.twoscale import CLASSES, make_two_scale_cohort, render_two_scale


def _area_mean(img: np.ndarray) -> np.ndarray:
    h, w, _ = img.shape
    return img.astype(float).reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))


def test_fine_detail_vanishes_in_the_20x_image() -> None:
    fine = render_two_scale("fine-rows", 256, np.random.default_rng(3))
    smooth = render_two_scale("smooth-rows", 256, np.random.default_rng(3))  # same nuclei, same noise
    hi = np.abs(fine.astype(float) - smooth.astype(float))
    lo = np.abs(_area_mean(fine) - _area_mean(smooth))
    assert hi.mean() > 3  # the 40x images differ inside every nucleus ...
    assert lo.mean() < 0.1 * hi.mean() and np.percentile(lo, 99) < 0.3 * 34  # ... their 2 x 2 means barely (only at nuclei rims)


def _row_regularity(img: np.ndarray) -> float:
    """Peak of the nuclei mask's 2-D autocorrelation away from the origin (rows give a strong lattice peak)."""
    mask = (img.astype(float).mean(axis=2) < 150).astype(float)
    mask -= mask.mean()
    spec = np.abs(np.fft.fft2(mask)) ** 2
    spec[0, 0] = 0
    return float(spec.max() / spec.sum())


def test_rows_and_scatter_have_equal_density_and_differ_in_arrangement() -> None:
    rows = [render_two_scale("smooth-rows", 512, np.random.default_rng(s)) for s in range(4)]
    scat = [render_two_scale("smooth-scatter", 512, np.random.default_rng(s)) for s in range(4)]
    dark = lambda im: float((im.mean(axis=2) < 150).mean())  # noqa: E731
    assert abs(np.mean([dark(i) for i in rows]) - np.mean([dark(i) for i in scat])) < 0.03
    assert min(_row_regularity(i) for i in rows) > 2 * max(_row_regularity(i) for i in scat)


def test_cohort_writes_an_index_that_tile_reads(tmp_path: Path) -> None:
    from histomag.cli.main import run

    index = make_two_scale_cohort(tmp_path / "c", patients=2, images_per_class=1, size=768, seed=1)
    with open(index, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == list(CLASSES) * 2 and {r["group"] for r in rows} == {"P00", "P01"}
    assert Image.open(index.parent / rows[0]["image"]).size == (768, 768)
    again = make_two_scale_cohort(tmp_path / "d", patients=2, images_per_class=1, size=768, seed=1)
    assert (index.parent / rows[3]["image"]).read_bytes() == (again.parent / rows[3]["image"]).read_bytes()
    assert run(["tile", str(index), "--out", str(tmp_path / "t"), "--mags", "40,20", "--size", "128",
                "--placement", "random", "--n-random", "2", "-q"]) == 0
    with open(tmp_path / "t" / "manifest.csv", newline="") as fh:
        tiled = list(csv.DictReader(fh))
    assert len(tiled) == 16 and {r["label"] for r in tiled} == set(CLASSES)
    with pytest.raises(ConfigError, match="size=255"):
        make_two_scale_cohort(tmp_path / "e", size=255)
    with pytest.raises(ConfigError, match="unknown two-scale class"):
        render_two_scale("fine", 256, np.random.default_rng(0))
