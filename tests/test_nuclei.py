"""The nuclei-size ruler: synthetic discs of known diameter, invariances, bad input, real MoNuSeg."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

import histomag.magnification.rulers.nuclei as nuclei
from histomag.errors import ConfigError, NoTissueError
from histomag.magnification.rulers.nuclei import NUCLEUS_SIZE_UM, NucleiMeasurement, haematoxylin, measure_nuclei, mpp_from_nuclei

PINK = (235, 190, 215)
PURPLE = (90, 50, 140)


def discs(size: int, d: float, *, seed: int = 0, noise: float = 3.0, fill: float = 0.25,
          bg: tuple[int, int, int] = PINK, fg: tuple[int, int, int] = PURPLE, ss: int = 3) -> np.ndarray:
    """Anti-aliased discs of diameter ``d`` px, one per cell of a jittered grid, on a noisy background."""
    rng = np.random.default_rng(seed)
    r = d / 2
    cell = max(np.sqrt(np.pi * r * r / fill), d + 1.0)
    nc = int(size // cell)
    cy = np.arange(nc)[:, None] * cell + 0.5 + r + rng.uniform(0, cell - d - 1.0, (nc, nc))
    cx = np.arange(nc)[None, :] * cell + 0.5 + r + rng.uniform(0, cell - d - 1.0, (nc, nc))
    sub = (np.arange(size * ss) + 0.5) / ss
    cell_of = np.minimum((sub // cell).astype(int), nc - 1)
    cover = np.zeros((size, size), np.float32)
    for oy in range(ss):
        py, jy = sub[oy::ss], cell_of[oy::ss]
        for ox in range(ss):
            px, jx = sub[ox::ss], cell_of[ox::ss]
            dy = py[:, None] - cy[jy[:, None], jx[None, :]]
            dx = px[None, :] - cx[jy[:, None], jx[None, :]]
            cover += dy * dy + dx * dx <= r * r
    cover /= ss * ss
    img = np.array(bg, np.float32) * (1 - cover[..., None]) + np.array(fg, np.float32) * cover[..., None]
    img += rng.normal(0, noise, img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def field(d: float, **kw) -> np.ndarray:
    """A field holding about 80+ discs of diameter ``d``."""
    return discs(int(max(160, 16 * d)), d, **kw)


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.mark.parametrize("d", [3, 5, 8, 14, 22, 30])
def test_size_tracks_disc_diameter(d):
    m = measure_nuclei(field(d))
    assert m.size_px == pytest.approx(d, rel=0.10)
    assert m.n_nuclei >= nuclei.MIN_NUCLEI
    assert 0 <= m.spread < 0.2   # identical discs


def test_downsampling_by_two_halves_the_size():
    rgb = field(12, seed=1)
    h, w = rgb.shape[:2]
    half = np.asarray(Image.fromarray(rgb).resize((w // 2, h // 2), Image.Resampling.BOX))
    assert measure_nuclei(half).size_px / measure_nuclei(rgb).size_px == pytest.approx(0.5, rel=0.10)


@pytest.mark.parametrize("change", ["blur", "jpeg", "stain", "pale"])
def test_acquisition_changes_size_little(change):
    rgb = field(10, seed=2)
    base = measure_nuclei(rgb).size_px
    if change == "blur":
        other = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(1)))
    elif change == "jpeg":
        other = jpeg(rgb, 70)
    elif change == "stain":   # bluer nuclei, redder background
        other = field(10, seed=2, fg=(60, 60, 160), bg=(240, 175, 195))
    else:                     # faint stain
        other = field(10, seed=2, fg=(160, 120, 190))
    assert measure_nuclei(other).size_px == pytest.approx(base, rel=0.10)


@pytest.mark.parametrize("colour", [PINK, (245, 245, 245), (150, 110, 170)])
@pytest.mark.parametrize("compress", [False, True])
def test_no_nuclei_raises(colour, compress):
    rng = np.random.default_rng(0)
    flat = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 3, (300, 300, 3)), 0, 255).astype(np.uint8)
    with pytest.raises(NoTissueError, match=str(nuclei.MIN_NUCLEI)):
        measure_nuclei(jpeg(flat, 70) if compress else flat)


def test_too_few_nuclei_says_how_many_are_needed():
    rgb = discs(120, 20)   # a handful of discs
    with pytest.raises(NoTissueError, match=f"at least {nuclei.MIN_NUCLEI}"):
        measure_nuclei(rgb)


def test_mpp_from_nuclei_known_case():
    m = NucleiMeasurement(n_nuclei=100, size_px=26.4, spread=0.3)
    assert mpp_from_nuclei(m, prior_um=6.6) == pytest.approx(0.25)
    assert mpp_from_nuclei(m) == pytest.approx(NUCLEUS_SIZE_UM / 26.4)
    with pytest.raises(ConfigError):
        mpp_from_nuclei(m, prior_um=0.0)
    with pytest.raises(ConfigError):
        mpp_from_nuclei(NucleiMeasurement(0, 0.0, 0.0))


def test_measured_mpp_of_a_synthetic_field():
    # 8 µm discs at 0.5 µm/px are 16 px: with an 8 µm prior the mpp comes back
    m = measure_nuclei(field(16, seed=3))
    assert mpp_from_nuclei(m, prior_um=8.0) == pytest.approx(0.5, rel=0.10)


def test_haematoxylin_is_rgb2hed_without_chroma_smoothing():
    from skimage.color import rgb2hed

    rgb = field(6, seed=4)
    rgb[0, 0] = (0, 10, 200)   # a zero channel reads as 1/255, as after np.maximum(rgb, 1)
    expected = rgb2hed(np.maximum(rgb, 1))[..., 0]
    np.testing.assert_allclose(haematoxylin(rgb, chroma_sigma=0), expected, atol=1e-5)


def test_rejects_what_is_not_an_rgb_image():
    with pytest.raises(ConfigError):
        measure_nuclei(np.zeros((50, 50), np.uint8))
    with pytest.raises(ConfigError):
        measure_nuclei(np.zeros((50, 50, 3), np.float32))


def test_rgba_is_read_as_rgb():
    rgb = field(8, seed=5)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert measure_nuclei(rgba) == measure_nuclei(rgb)


def test_large_image_is_measured_on_a_known_downsample(monkeypatch):
    rgb = field(16, seed=6)                      # 256 px
    full = measure_nuclei(rgb)
    monkeypatch.setattr(nuclei, "MAX_PIXELS", rgb.shape[0] * rgb.shape[1] // 3)   # factor 2
    assert measure_nuclei(rgb).size_px == pytest.approx(full.size_px, rel=0.10)


def test_large_image_with_small_nuclei_uses_a_full_resolution_window(monkeypatch):
    rgb = discs(300, 4, seed=7)
    full = measure_nuclei(rgb)
    monkeypatch.setattr(nuclei, "MAX_PIXELS", 200 * 200)   # factor 2 would leave 2 px nuclei
    m = measure_nuclei(rgb)
    assert m.size_px == pytest.approx(full.size_px, rel=0.05)
    assert m.n_nuclei < full.n_nuclei


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["TCGA-B0-5710-01Z-00-DX1", "TCGA-AC-A2FO-01A-01-TS1"])
def test_real_monuseg_nuclei(shared_data, name):
    from skimage.measure import label, regionprops_table

    crop = (slice(0, 600), slice(0, 600))   # keeps the test fast
    rgb = np.asarray(Image.open(shared_data / "monuseg" / "images" / f"{name}.png").convert("RGB"))[crop]
    mask = np.asarray(Image.open(shared_data / "monuseg" / "nuclei_masks" / f"{name}.png"))
    mask = (mask[..., 0] if mask.ndim == 3 else mask)[crop] > 127
    t = regionprops_table(label(mask, connectivity=1), properties=("area", "equivalent_diameter_area"))
    truth = float(np.median(t["equivalent_diameter_area"][t["area"] >= 20]))
    m = measure_nuclei(rgb)
    assert m.n_nuclei >= 50
    assert m.size_px == pytest.approx(truth, rel=0.25)
    assert 0.15 < mpp_from_nuclei(m) < 0.4   # 40x, about 0.25 µm/px
