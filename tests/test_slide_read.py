"""Reading fields at a magnification: level choice, exact same-field geometry, refusals."""

import numpy as np
import pytest

from helpers import MemorySlide, textured
from histomag.errors import ConfigError, MissingResolutionError, UpsampleError
from histomag.tiling.fields import downsample_area


def test_same_fov_20x_equals_area_downsample_of_40x(memory_slide):
    c = (700.0, 500.0)
    hi = memory_slide.read(c, 600, magnification=40)
    lo = memory_slide.read(c, 300, magnification=20)
    assert hi.shape == (600, 600, 3) and lo.shape == (300, 300, 3)
    diff = np.abs(downsample_area(hi, 300).astype(int) - lo.astype(int))
    assert diff.max() <= 1  # exact up to rounding: same tissue, area resampling


def test_fractional_centre_still_same_tissue(memory_slide):
    c = (701.3, 499.7)
    hi = memory_slide.read(c, 200, magnification=40)
    lo = memory_slide.read(c, 100, magnification=20)
    diff = np.abs(downsample_area(hi, 100).astype(int) - lo.astype(int))
    # an odd level-0 origin falls between level-1 pixels: resampled, not exact, but the same tissue
    shifted = memory_slide.read((c[0] + 8, c[1]), 100, magnification=20)
    shift_diff = np.abs(downsample_area(hi, 100).astype(int) - shifted.astype(int)).mean()
    assert diff.mean() < 0.35 * shift_diff


def test_best_level_choice(memory_slide):
    res = memory_slide.to_resolution
    assert memory_slide.best_level(res(magnification=40)) == 0
    assert memory_slide.best_level(res(magnification=20)) == 1
    assert memory_slide.best_level(res(magnification=15)) == 1
    assert memory_slide.best_level(res(magnification=10)) == 2
    assert memory_slide.best_level(res(magnification=1)) == 2


def test_read_at_pyramid_level_is_that_level(memory_slide):
    out = memory_slide.read((512.0, 512.0), 128, magnification=10)
    lvl = memory_slide.levels[2]
    np.testing.assert_array_equal(out, lvl[128 - 64:128 + 64, 128 - 64:128 + 64])


def test_non_integer_magnification_is_antialiased(memory_slide):
    out = memory_slide.read((700.0, 500.0), 96, magnification=12.5)
    ref = downsample_area(memory_slide.read((700.0, 500.0), 384, magnification=50 / 1, allow_upsample=True), 96)
    assert out.shape == (96, 96, 3)
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 4


def test_outside_is_white(memory_slide):
    out = memory_slide.read((0.0, 0.0), 100, magnification=40)
    assert (out[:50, :50] == 255).all()
    assert not (out[60:, 60:] == 255).all()


def test_upsample_refused_unless_allowed(memory_slide):
    with pytest.raises(UpsampleError) as e:
        memory_slide.read((500.0, 500.0), 100, magnification=80)
    assert "allow_upsample=True" in str(e.value) and "\n" not in str(e.value)
    out = memory_slide.read((500.0, 500.0), 100, magnification=80, allow_upsample=True)
    assert out.shape == (100, 100, 3)


def test_near_scan_resolution_is_not_an_upsample():
    s = MemorySlide(textured(256, 256), mpp=0.2525, objective_power=None)  # a 39.6x scan
    assert s.read((128.0, 128.0), 64, magnification=40).shape == (64, 64, 3)


def test_resolution_precedence():
    img = textured(64, 64)
    assert MemorySlide(img, mpp=0.25, objective_power=40, mpp_override=0.5).mpp_source == "override"
    s = MemorySlide(img, mpp=0.26, objective_power=40)
    assert (s.mpp_source, s.mpp) == ("metadata-mpp", 0.26)
    s = MemorySlide(img, mpp=None, objective_power=20)
    assert (s.mpp_source, s.mpp) == ("metadata-objective-power", 0.5)
    s = MemorySlide(img, mpp=None, objective_power=None)
    assert s.mpp_source == "missing" and s.info()["mpp"] is None
    with pytest.raises(MissingResolutionError) as e:
        s.read((32.0, 32.0), 16, magnification=10)
    assert "mpp=" in str(e.value) and "--" not in str(e.value)


def test_slide_stating_both_keeps_its_ratio():
    s = MemorySlide(textured(64, 64), mpp=0.499, objective_power=20)
    assert s.magnification == pytest.approx(20.0)
    assert s.to_resolution(magnification=20).mpp == pytest.approx(0.499)
    assert s.to_resolution(magnification=10).mpp == pytest.approx(0.998)


def test_read_needs_one_of_mag_or_mpp(memory_slide):
    with pytest.raises(ConfigError):
        memory_slide.read((10.0, 10.0), 8)
    out = memory_slide.read((512.0, 512.0), 64, mpp=1.0)
    np.testing.assert_array_equal(out, memory_slide.read((512.0, 512.0), 64, magnification=10))


def test_white_composite_blends_in_integers_and_skips_opaque_regions() -> None:
    from histomag.slide.props import white_composite

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (64, 48, 4), dtype=np.uint8)
    rgba[:8, :, 3] = 0  # outside the scan
    rgba[8:16, :, 3] = 255
    ref_rgb = rgba[..., :3].astype(np.float64)
    ref_a = rgba[..., 3:4].astype(np.float64) / 255.0
    reference = np.floor(ref_rgb * ref_a + 255.0 * (1.0 - ref_a) + 0.5).astype(np.uint8)
    out = white_composite(rgba)
    assert out.dtype == np.uint8 and out.shape == (64, 48, 3)
    assert np.array_equal(out, reference)  # the exact rounded blend, for every alpha
    assert (out[:8] == 255).all() and np.array_equal(out[8:16], rgba[8:16, :, :3])
    opaque = rgba.copy()
    opaque[..., 3] = 255
    assert np.array_equal(white_composite(opaque), opaque[..., :3])


def test_white_composite_takes_pil_regions_too() -> None:
    from PIL import Image

    from histomag.slide.props import white_composite

    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    assert np.array_equal(white_composite(Image.fromarray(rgba, "RGBA")), rgba[..., :3])
    rgba[:5, :, 3] = 0
    out = white_composite(Image.fromarray(rgba, "RGBA"))
    assert (out[:5] == 255).all() and np.array_equal(out[5:], rgba[5:, :, :3])


def test_a_registered_toy_backend_opens_its_files_through_open_slide(tmp_path) -> None:
    """Adding a slide backend is one register_backend call: auto offers it the files it detects."""
    from pathlib import Path

    from histomag.slide import SLIDE_BACKENDS, BackendSpec, backend_names, open_slide, register_backend

    class NpySlide(MemorySlide):
        backend = "npy"

    def open_npy(path: Path, mpp) -> NpySlide:
        from histomag.errors import UnreadableSlideError

        try:
            arr = np.load(path)
        except ValueError:
            raise UnreadableSlideError(f"{path.name}: not an .npy array") from None
        return NpySlide(arr, mpp=0.5, objective_power=20.0, name=path.name, mpp_override=mpp)

    image = textured(300, 400)
    np.save(tmp_path / "a.npy", image)
    register_backend(BackendSpec("npy", open_npy, lambda p: p.suffix == ".npy", priority=5))
    try:
        assert backend_names()[:2] == ["auto", "npy"]
        with open_slide(tmp_path / "a.npy") as s:
            assert s.backend == "npy" and s.mpp == 0.5 and s.dimensions == (400, 300)
            assert np.array_equal(s.read_rect(0, 0, 400, 300, (400, 300)), image)
        with open_slide(tmp_path / "a.npy", mpp=0.25) as s:  # overrides work as for every backend
            assert s.mpp == 0.25
    finally:
        SLIDE_BACKENDS.unregister("npy")
    assert "npy" not in backend_names()
