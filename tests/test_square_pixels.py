"""Pixels that are not square: every read returns square pixels at the coarser axis, never an average.

The in-memory slide below has pixels 0.5 µm wide and 0.25 µm tall (a pyramid of 3 levels); a disc
drawn round in micrometres must come out round, and a read must equal an area resample of the
file's pixels to square ones.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import area_halve, textured
from histomag.cli.main import run
from histomag.errors import ConfigError
from histomag.resolution import square_pixels
from histomag.slide.base import Slide, SlideMetadata

MPP_X, MPP_Y = 0.5, 0.25


class AnisoSlide(Slide):
    """An in-memory pyramid whose level-0 pixels are ``mpp_x`` wide and ``mpp_y`` tall."""

    backend = "memory"

    def __init__(self, level0: np.ndarray, mpp_x: float, mpp_y: float, n_levels: int = 3,
                 mpp_override=None) -> None:
        self.levels = [level0]
        for _ in range(n_levels - 1):
            self.levels.append(area_halve(self.levels[-1]))
        dims = tuple((a.shape[1], a.shape[0]) for a in self.levels)
        downs = tuple(level0.shape[1] / a.shape[1] for a in self.levels)
        super().__init__(Path("aniso.svs"), SlideMetadata(dims, downs, mpp_x=mpp_x, mpp_y=mpp_y), mpp_override)

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        lx, ly = int(round(x / ds)), int(round(y / ds))
        return self.levels[level][ly:ly + height, lx:lx + width].copy()


def disc_image(width_um: float, height_um: float, mpp_x: float, mpp_y: float, radius_um: float,
               texture_seed: int = 0) -> np.ndarray:
    """Textured background with a dark disc of ``radius_um`` at the centre, sampled on an mpp_x x mpp_y grid."""
    w, h = int(round(width_um / mpp_x)), int(round(height_um / mpp_y))
    img = textured(h, w, seed=texture_seed) // 2 + 120  # light texture (each channel 135-235)
    xs = (np.arange(w) + 0.5) * mpp_x - width_um / 2
    ys = (np.arange(h) + 0.5) * mpp_y - height_um / 2
    inside = xs[None, :] ** 2 + ys[:, None] ** 2 <= radius_um ** 2
    img[inside] = (40, 20, 60)
    return img


def extent(rgb: np.ndarray) -> tuple[int, int]:
    """(width, height) in px of the dark disc."""
    dark = rgb.astype(int).sum(axis=2) < 280  # halfway between the disc (120) and the background (> 400)
    ys, xs = np.nonzero(dark)
    return int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    return disc_image(256.0, 256.0, MPP_X, MPP_Y, radius_um=60.0)  # 512 x 1024 file pixels


@pytest.fixture
def aniso(raw) -> AnisoSlide:
    return AnisoSlide(raw, MPP_X, MPP_Y)


def test_metadata_keeps_both_axes_and_uses_the_coarser(aniso, raw):
    assert (aniso.mpp_x, aniso.mpp_y, aniso.mpp) == (MPP_X, MPP_Y, MPP_X)
    assert aniso.anisotropic and aniso.pixel_scale == (1.0, 0.5)
    assert aniso.dimensions == (512, 512) and aniso.level_dimensions[0] == (512, 1024)
    d = aniso.info()
    assert d["dimensions"] == [512, 512] and d["file_dimensions"] == [512, 1024]
    assert (d["mpp_x"], d["mpp_y"], d["mpp"], d["square_pixels"]) == (MPP_X, MPP_Y, MPP_X, False)


def test_field_of_n_microns_has_the_right_pixel_count_on_both_axes(aniso):
    for mpp, size in ((0.5, 200), (1.0, 100), (2.0, 50)):  # 100 µm at each resolution
        out = aniso.read((256.0, 256.0), size, mpp=mpp)
        assert out.shape == (size, size, 3)
    assert aniso.read_whole(0.5).shape == (512, 512, 3)
    assert aniso.read_whole(2.0).shape == (128, 128, 3)


def test_reads_equal_a_reference_square_resample(aniso, raw):
    ref, mpp = square_pixels(raw, MPP_X, MPP_Y)
    assert mpp == MPP_X and ref.shape == (512, 512, 3)
    out = aniso.read((300.0, 200.0), 128, mpp=MPP_X)
    np.testing.assert_array_equal(out, ref[136:264, 236:364])  # pixel-exact at the scan resolution
    np.testing.assert_array_equal(aniso.read_whole(MPP_X), ref)
    np.testing.assert_array_equal(aniso.read_native(236, 136, 128, 128), ref[136:264, 236:364])
    # a coarser read comes from a coarser level and still matches the area downsample of the reference
    lo = aniso.read((256.0, 256.0), 64, mpp=2.0)
    from histomag.tiling.fields import downsample_area

    ref_lo = downsample_area(ref[128:384, 128:384], 64)
    assert np.abs(lo.astype(int) - ref_lo.astype(int)).max() <= 2


def test_a_round_object_stays_round(aniso, raw):
    w_raw, h_raw = extent(raw)
    assert h_raw > 1.9 * w_raw  # in the file's pixels the disc is an ellipse twice as tall
    for mpp in (0.5, 1.0):
        w, h = extent(aniso.read_whole(mpp))
        assert abs(w - h) <= 1, (mpp, w, h)
        assert w == pytest.approx(120 / mpp, abs=2)  # 120 µm across
    overview, ds = aniso.read_overview(max_side=100)
    assert max(overview.shape[:2]) == 100 and overview.shape[0] == overview.shape[1]
    assert ds == pytest.approx((512 / 100, 512 / 100))
    w, h = extent(overview)
    assert abs(w - h) <= 1


def test_tissue_mask_and_upsample_refusal_in_square_pixels(aniso):
    from histomag.errors import UpsampleError
    from histomag.tissue import tissue_mask

    mask = tissue_mask(aniso, mpp=4.0, min_object_um2=0, max_hole_um2=0, closing_um=0)
    assert mask.dimensions == pytest.approx((512.0, 512.0))
    with pytest.raises(UpsampleError):  # 0.25 µm/px exists along y only: that would upsample x
        aniso.read((256.0, 256.0), 64, mpp=0.25)


def test_pixels_within_one_percent_are_untouched(raw):
    img = raw[:512]
    s = AnisoSlide(img, 0.25, 0.2505)
    assert not s.anisotropic and s.pixel_scale == (1.0, 1.0) and s.dimensions == (512, 512)
    assert s.mpp == 0.2505  # the coarser value, never the mean
    np.testing.assert_array_equal(s.read_native(10, 20, 100, 50), img[20:70, 10:110])
    np.testing.assert_array_equal(s.read((256.0, 256.0), 100, mpp=s.mpp), img[206:306, 206:306])


def test_override_pair_and_its_validation(tmp_path):
    p = tmp_path / "snap.png"
    Image.fromarray(disc_image(64.0, 48.0, 0.5, 0.25, 15.0)).save(p)  # 128 x 192 file pixels
    from histomag.slide import open_slide

    with open_slide(p, mpp=(0.5, 0.25)) as s:
        assert (s.mpp, s.mpp_source, s.dimensions) == (0.5, "override", (128, 96))
        w, h = extent(s.read_whole(0.5))
        assert abs(w - h) <= 1
    with open_slide(p, mpp=0.5) as s:  # one value: square pixels as stored
        assert s.dimensions == (128, 192) and not s.anisotropic
    for bad in ((0.5, 0.0), (0.5,), (0.5, 0.25, 0.1), ("a", 0.2)):
        with pytest.raises(ConfigError):
            open_slide(p, mpp=bad)  # type: ignore[arg-type]


def test_info_shows_both_axes(tmp_path, capsys):
    p = tmp_path / "snap.png"
    Image.fromarray(disc_image(64.0, 48.0, 0.5, 0.25, 15.0)).save(p)
    assert run(["info", str(p), "--mpp", "0.5,0.25", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["mpp"], d["mpp_x"], d["mpp_y"], d["dimensions"]) == (0.5, 0.5, 0.25, [128, 96])
    assert run(["info", str(p), "--mpp", "0.5,0.25"]) == 0
    out = capsys.readouterr().out
    assert "0.5 µm wide x 0.25 µm tall" in out and "resampled to square" in out
    assert run(["info", str(p), "--mpp", "0.5"]) == 0
    assert "not square" not in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_tiff_with_different_x_and_y_resolution(tmp_path, backend):
    tifffile = pytest.importorskip("tifffile")
    from histomag.slide import open_slide

    raw = disc_image(160.0, 128.0, 0.5, 0.25, 40.0)  # 320 x 512 file pixels
    path = tmp_path / "aniso.tiff"
    levels = [raw]
    while min(levels[-1].shape[:2]) > 64:
        levels.append(np.ascontiguousarray(area_halve(levels[-1])))
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(levels):  # 20000 px/cm = 0.5 µm wide, 40000 px/cm = 0.25 µm tall
            tw.write(level, tile=(64, 64), photometric="rgb", compression="zlib", resolution=(20000, 40000),
                     resolutionunit="CENTIMETER", subfiletype=1 if i else 0)
    with open_slide(path, backend=backend) as s:
        assert (s.mpp_x, s.mpp_y, s.mpp) == (pytest.approx(0.5), pytest.approx(0.25), pytest.approx(0.5))
        assert s.dimensions == (320, 256)
        ref, _ = square_pixels(raw, 0.5, 0.25)
        np.testing.assert_array_equal(s.read_whole(s.mpp), ref)
        w, h = extent(s.read_whole(1.0))
        assert abs(w - h) <= 1


def test_labels_in_file_pixels_map_to_square_coordinates(tmp_path, aniso):
    from histomag.tiling.jobs import load_labels

    labels = np.zeros((1024, 512), np.uint8)  # file pixels: the top half (in µm) is class 1
    labels[:512] = 1
    p = tmp_path / "aniso.labels.png"
    Image.fromarray(labels).save(p)
    mask = load_labels(p, aniso, tissue_mpp=8.0)
    assert mask.fractions(0, 0, 512, 256)["class-1"] == pytest.approx(1.0)
    assert mask.fractions(0, 256, 512, 256)["class-1"] == pytest.approx(0.0)


def test_isotropic_slides_read_as_before(memory_slide):
    assert memory_slide.pixel_scale == (1.0, 1.0) and memory_slide.dimensions == (1536, 1024)
    out = memory_slide.read((512.0, 512.0), 128, magnification=10)
    np.testing.assert_array_equal(out, memory_slide.levels[2][128 - 64:128 + 64, 128 - 64:128 + 64])


# ----- the real BACH snapshots ------------------------------------------------------------------
def test_bach_image_reads_square_at_056(shared_data):
    from histomag.slide import open_slide

    path = sorted((shared_data / "bach" / "images").glob("*/*.jpeg"))[0]
    with open_slide(path, mpp=(0.56, 0.42)) as s:
        assert s.mpp == 0.56 and s.level_dimensions[0] == (1536, 1536) and s.dimensions == (1536, 1152)
        whole = s.read_whole(0.56)
        assert whole.shape == (1152, 1536, 3)
        field = s.read((768.0, 576.0), 224, mpp=0.56)
        assert field.shape == (224, 224, 3)
