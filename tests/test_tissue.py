"""Tissue mask: detection on synthetic images, O(1) field fractions, the slide entry point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histomag.errors import ConfigError, NoTissueError
from histomag.slide.base import Slide, SlideMetadata
from histomag.tissue import (TissueMask, box_sums, require_tissue, summed_area_table,
                             tissue_mask, tissue_mask_from_rgb)

PINK = (215, 140, 190)
GLASS = 238


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


def _image(disc: np.ndarray, color=PINK, glass=GLASS, noise=3.0, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full(disc.shape + (3,), glass, np.float64)
    img[disc] = color
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def disc_case():
    disc = _disc(256, 320, 150, 130, 80)
    mask = tissue_mask_from_rgb(_image(disc), downsample=(16.0, 16.0), mpp=8.0)
    return disc, mask


def test_pink_disc_on_glass_is_found(disc_case):
    disc, mask = disc_case
    assert mask.mask.shape == disc.shape and mask.mask.dtype == bool
    assert _iou(mask.mask, disc) > 0.9
    assert 0.05 <= mask.threshold <= 0.15
    assert mask.tissue_fraction == pytest.approx(disc.mean(), rel=0.05)
    assert mask.dimensions == (320 * 16.0, 256 * 16.0)


def test_fraction_of_fields_in_level0_coordinates(disc_case):
    _, mask = disc_case
    # disc centre (150, 130) mask px -> level-0 (2400, 2080), radius 1280 level-0 px
    assert mask.fraction(2400 - 300.5, 2080 - 299.25, 600.0, 600.0) == pytest.approx(1.0, abs=0.01)
    assert mask.fraction(10.0, 10.0, 600.0, 600.0) == pytest.approx(0.0, abs=0.01)
    # straddles the disc's right edge at x = 2400 + 1280: half inside
    half = mask.fraction(3680 - 100.0, 2080 - 100.0, 200.0, 200.0)
    assert half == pytest.approx(0.5, abs=0.06)


def test_fraction_is_exact_on_a_known_mask():
    m = np.zeros((10, 12), bool)
    m[:, :5] = True  # tissue in level-0 x < 80 at downsample 16
    tm = TissueMask(m, (16.0, 8.0))
    assert tm.fraction(72.5, 3.3, 15.0, 20.0) == pytest.approx(0.5, abs=1e-12)
    assert tm.fraction(0.25, 0.75, 7.0, 3.0) == pytest.approx(1.0, abs=1e-12)
    assert tm.fraction(100.0, 0.0, 50.0, 80.0) == pytest.approx(0.0, abs=1e-12)
    # parts outside the slide count as no tissue
    assert tm.fraction(-80.0, 0.0, 160.0, 40.0) == pytest.approx(0.5, abs=1e-12)
    assert tm.fraction(0.0, -40.0, 40.0, 80.0) == pytest.approx(0.5, abs=1e-12)
    assert tm.fraction(-1000.0, -1000.0, 10.0, 10.0) == 0.0
    assert tm.tissue_fraction == pytest.approx(5 / 12)


def test_fraction_matches_brute_force_on_random_fields():
    rng = np.random.default_rng(1)
    m = rng.random((13, 17)) > 0.5
    tm = TissueMask(m, (4.0, 2.0))
    full = np.kron(m, np.ones((2, 4), bool))  # level-0 image, h = 26, w = 68
    boxes = []
    for _ in range(200):
        x, y = rng.integers(-10, 68), rng.integers(-5, 26)
        w, h = rng.integers(1, 30), rng.integers(1, 15)
        window = np.zeros((h, w))
        xs, ys = slice(max(x, 0), min(x + w, 68)), slice(max(y, 0), min(y + h, 26))
        window_sum = full[ys, xs].sum() if xs.stop > xs.start and ys.stop > ys.start else 0
        assert tm.fraction(float(x), float(y), float(w), float(h)) == pytest.approx(window_sum / window.size, abs=1e-9)
        boxes.append((x, y, w, h))
    vec = tm.fractions(np.array(boxes, float))
    assert np.allclose(vec, [tm.fraction(*map(float, b)) for b in boxes], atol=1e-12)


def test_box_sums_fractional_pixel_weights():
    sat = summed_area_table(np.array([[1, 0], [0, 1]], bool))
    assert float(box_sums(sat, 0.5, 0.5, 1.5, 1.5)) == pytest.approx(0.5)
    assert float(box_sums(sat, 0.0, 0.0, 0.5, 0.5)) == pytest.approx(0.25)
    assert float(box_sums(sat, 2.0, 0.0, 3.0, 2.0)) == 0.0


def test_empty_field_is_refused():
    with pytest.raises(ConfigError):
        TissueMask(np.ones((2, 2), bool)).fraction(0, 0, 0, 5)


@pytest.mark.parametrize("glass", [245, 225, 200])
@pytest.mark.parametrize("method", ["otsu", None])
def test_blank_glass_gives_no_tissue(glass, method):
    img = _image(np.zeros((200, 240), bool), glass=glass, noise=4.0, seed=glass)
    mpp = 8.0 if method else None  # also without morphology
    mask = tissue_mask_from_rgb(img, mpp=mpp)
    assert mask.tissue_fraction < 0.002


def test_image_all_tissue_is_all_tissue():
    img = _image(np.ones((120, 120), bool), noise=6.0)
    img[::7, ::5] = (120, 40, 150)  # nuclei: a second, more saturated population
    assert tissue_mask_from_rgb(img, mpp=8.0).tissue_fraction > 0.99


def test_threshold_override_changes_the_result():
    strong = _disc(200, 200, 60, 100, 40)
    pale = _disc(200, 200, 150, 100, 40)
    img = _image(strong)
    img[pale] = (230, 218, 226)  # saturation ~0.05: below the clipped Otsu value
    auto = tissue_mask_from_rgb(img, mpp=8.0)
    assert _iou(auto.mask, strong) > 0.9
    low = tissue_mask_from_rgb(img, mpp=8.0, threshold=0.03)
    assert low.threshold == 0.03
    assert _iou(low.mask, strong | pale) > 0.9
    high = tissue_mask_from_rgb(img, mpp=8.0, threshold=0.9)
    assert not high.mask.any()


def test_od_method_finds_the_disc(disc_case):
    disc, _ = disc_case
    mask = tissue_mask_from_rgb(_image(disc), method="od", mpp=8.0)
    assert _iou(mask.mask, disc) > 0.9
    assert 0.1 <= mask.threshold <= 0.3


def test_black_areas_and_small_debris_are_not_tissue():
    disc = _disc(200, 200, 100, 100, 50)
    img = _image(disc)
    img[:20, :] = np.random.default_rng(3).integers(0, 25, (20, 200, 3))  # noisy black border
    img[180:183, 20:23] = PINK  # 3x3 px debris = 576 µm² at 8 µm/px
    mask = tissue_mask_from_rgb(img, mpp=8.0)
    assert _iou(mask.mask, disc) > 0.9
    assert not mask.mask[:20].any() and not mask.mask[175:190, 15:30].any()
    assert tissue_mask_from_rgb(img).mask[181, 21]  # no morphology without mpp


def test_small_holes_are_filled_and_large_kept():
    disc = _disc(200, 200, 100, 100, 70)
    img = _image(disc)
    img[98:101, 98:101] = GLASS  # 9 px = 576 µm²: filled
    img[40:60, 90:110] = GLASS  # 400 px = 25600 µm²: kept
    mask = tissue_mask_from_rgb(img, mpp=8.0)
    assert mask.mask[99, 99]
    assert not mask.mask[45:55, 95:105].any()


def test_bad_arguments_are_refused():
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ConfigError):
        tissue_mask_from_rgb(img, method="magic")
    with pytest.raises(ConfigError):
        tissue_mask_from_rgb(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ConfigError):
        tissue_mask_from_rgb(img, threshold=-1.0)


def test_require_tissue():
    empty = TissueMask(np.zeros((5, 5), bool), (16.0, 16.0), threshold=0.12)
    with pytest.raises(NoTissueError) as err:
        require_tissue(empty, "slide-7.svs")
    msg = str(err.value)
    assert "\n" not in msg and "slide-7.svs" in msg and "tissue_threshold=" in msg and "0.12" in msg
    some = TissueMask(np.eye(5, dtype=bool))
    assert require_tissue(some, "s") is some
    with pytest.raises(NoTissueError):
        require_tissue(some, "s", min_fraction=0.5)


# ----- tissue_mask(slide) with an in-memory slide ----------------------------------------------
class ArraySlide(Slide):
    """A two-level in-memory pyramid (downsamples 1 and 4)."""

    backend = "array"

    def __init__(self, level0: np.ndarray, mpp: float) -> None:
        h, w = level0.shape[:2]
        self.levels = [level0, level0.reshape(h // 4, 4, w // 4, 4, 3).mean(axis=(1, 3)).astype(np.uint8)]
        meta = SlideMetadata(level_dimensions=((w, h), (w // 4, h // 4)), level_downsamples=(1.0, 4.0), mpp=mpp)
        super().__init__(Path("fake.tif"), meta)
        self.levels_read: list[int] = []

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        self.levels_read.append(level)
        ds = int(self.level_downsamples[level])
        src = self.levels[level]
        out = np.full((height, width, 3), 255, np.uint8)
        lx, ly = x // ds, y // ds
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + width, src.shape[1]), min(ly + height, src.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = src[y0:y1, x0:x1]
        return out


def test_tissue_mask_of_a_slide_reads_a_low_level():
    disc0 = _disc(1024, 1280, 600, 500, 300)
    slide = ArraySlide(_image(disc0, noise=2.0), mpp=0.5)
    mask = tissue_mask(slide, mpp=8.0)
    assert slide.levels_read and set(slide.levels_read) == {1}
    assert mask.mask.shape == (64, 80)
    assert mask.downsample == (16.0, 16.0)
    assert mask.mpp == pytest.approx(8.0)
    assert _iou(mask.mask, _disc(64, 80, 600 / 16, 500 / 16, 300 / 16)) > 0.9
    assert mask.fraction(500, 400, 200, 200) == pytest.approx(1.0)
    assert mask.fraction(0, 0, 200, 200) == pytest.approx(0.0)
    assert mask.fraction(900 - 64, 400, 128, 200) == pytest.approx(0.5, abs=0.1)
