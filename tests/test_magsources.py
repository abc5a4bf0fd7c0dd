"""Real sources (index CSVs with mpp / mpp_x+mpp_y), online crops at known scale, acquisition randomisation."""

import numpy as np
import pytest
from PIL import Image

from helpers import nuclei_image
from histomag.magnification.acquisition import AcquisitionSettings, resample, simulate_acquisition
from histomag.magnification.sources import (
    RealSource,
    ScaleSampleDataset,
    collect_entries,
    eval_views,
    load_source,
    nominal_magnification,
    read_index_entries,
)
from histomag.errors import ConfigError, DatasetError


def _write_index(tmp_path, rows, header):
    path = tmp_path / "index.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_index_with_anisotropic_pixels_is_squared(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(nuclei_image(400, 300, 0.5, rng)).save(tmp_path / "a.png")
    idx = _write_index(tmp_path, ["a.png,0.56,0.42"], "image,mpp_x,mpp_y")
    (entry,) = read_index_entries(idx)
    src = load_source(entry)
    # 400 rows of 0.42 µm = 168 µm = 300 rows of 0.56 µm; width untouched
    assert src.mpp == pytest.approx(0.56) and src.rgb.shape == (300, 300, 3)
    assert src.group == tmp_path.name


def test_index_may_list_slides_and_its_mpp_wins(cohort, tmp_path, monkeypatch):
    """A slide in an index CSV is read by the slide readers (not decoded whole by PIL), at the index's mpp."""
    import histomag.magnification.sources as ms

    monkeypatch.setattr(ms, "MAX_SLIDE_PIXELS", 1000 * 1000)   # a large slide is read as a centred window
    slide = sorted(cohort.glob("*.svs"))[0]
    idx = _write_index(tmp_path, [f"{slide},synthetic,0.5", f"{slide.with_name('x.png')},synthetic,0.5"],
                       "image,group,mpp")
    entries = read_index_entries(idx)
    src = load_source(entries[0])
    # metadata says 0.25 µm/px; the index says 0.5: the index wins, pixels are the slide's own level 0
    assert src.mpp == pytest.approx(0.5) and src.group == "synthetic" and src.rgb.shape == (1000, 1000, 3)
    with pytest.raises(DatasetError, match="x.png"):
        load_source(entries[1])
    # without an mpp in the index, the slide's metadata is used
    (meta,) = collect_entries([slide])
    assert load_source(meta).mpp == pytest.approx(0.25)


def test_index_errors_name_row_and_column(tmp_path):
    idx = _write_index(tmp_path, ["a.png,0.5,", "b.png,0.5,0.5"], "image,mpp_x,mpp_y")
    with pytest.raises(DatasetError, match=r"row 2: has mpp_x but no mpp_y"):
        read_index_entries(idx)
    idx = _write_index(tmp_path, ["a.png,-1"], "image,mpp")
    with pytest.raises(DatasetError, match=r"row 2: column 'mpp' is '-1'"):
        read_index_entries(idx)
    idx = _write_index(tmp_path, ["a.png,abc"], "image,mpp")
    with pytest.raises(DatasetError, match="not a number"):
        read_index_entries(idx)
    idx = _write_index(tmp_path, ["a.png"], "image,organ")
    with pytest.raises(DatasetError, match="needs a resolution column"):
        read_index_entries(idx)


def test_groups_split_by_scan_resolution(tmp_path):
    idx = _write_index(tmp_path, ["a.png,,20", "b.png,,40", "c.png,0.2456,", "d.png,0.2527,"],
                       "image,mpp,magnification")
    groups = [e.group for e in read_index_entries(idx)]
    name = tmp_path.name
    assert groups == [f"{name}-20x", f"{name}-40x", f"{name}-40x", f"{name}-40x"]
    assert nominal_magnification(39.6) == 40 and nominal_magnification(44.0) == 40 and nominal_magnification(18) == 20
    with pytest.raises(ConfigError, match="share the id"):
        collect_entries([idx, idx])


def _period_px(rgb: np.ndarray) -> float:
    """Dominant horizontal period of a grey image (FFT of the column means)."""
    signal = rgb.mean(axis=(0, 2))
    spec = np.abs(np.fft.rfft(signal - signal.mean()))
    k = int(np.argmax(spec[1:]) + 1)
    return len(signal) / k


def test_crops_are_labelled_with_their_physical_scale():
    # vertical stripes with a period of 16 px at 0.25 µm/px (4 µm): at magnification M the period is
    # 16 * M / 40 px, so the label can be checked against the pixels
    x = np.arange(1024)
    stripes = (127 + 100 * np.sin(2 * np.pi * x / 16)).astype(np.uint8)
    rgb = np.repeat(np.repeat(stripes[None, :, None], 1024, axis=0), 3, axis=2)
    src = RealSource("s", "g", "", 0.25, rgb, "mem")
    ds = ScaleSampleDataset([src], 40, 128, fixed=True, mag_range=(8.0, 40.0), native_share=0.2)
    for i in range(len(ds)):
        crop, mag, _ = ds.sample(i)
        assert crop.shape == (128, 128, 3) and 8.0 - 1e-6 <= mag <= 40.0 + 1e-6
        assert _period_px(crop) == pytest.approx(16 * mag / 40, rel=0.08)
    # the same item is the same crop (validation); training items are random
    assert np.array_equal(ds.sample(3)[0], ds.sample(3)[0])


def test_small_sources_are_left_out_and_nothing_fits_is_an_error():
    rng = np.random.default_rng(1)
    big = RealSource("big", "g1", "", 0.25, nuclei_image(512, 512, 0.25, rng), "mem")
    tiny = RealSource("tiny", "g2", "", 0.25, nuclei_image(100, 100, 0.25, rng), "mem")
    ds = ScaleSampleDataset([big, tiny], 8, 128)
    assert [s.source_id for s in ds.sources] == ["big"]
    with pytest.raises(DatasetError, match="no source is large enough"):
        ScaleSampleDataset([tiny], 8, 128)


def test_eval_views_downsample_by_known_factors():
    rng = np.random.default_rng(2)
    src = RealSource("s", "g", "", 0.25, nuclei_image(600, 800, 0.25, rng), "mem")
    views = eval_views(src, 128)
    assert [round(v.magnification) for v in views] == [40, 20, 10]  # 600/8 = 75 < 128 px stops it
    assert views[1].rgb.shape == (300, 400, 3)


def test_acquisition_off_is_plain_box_resampling():
    rng = np.random.default_rng(3)
    region = nuclei_image(256, 256, 0.25, rng)
    out = simulate_acquisition(region, 128, AcquisitionSettings.off().__class__(
        **{**AcquisitionSettings.off().__dict__, "color": (0.0, 0.0, 0.0)}), np.random.default_rng(0))
    assert np.array_equal(out, resample(region, 128))


@pytest.mark.parametrize("part", ["blur", "sharpen", "noise", "jpeg", "stain"])
def test_each_acquisition_part_changes_the_pixels_but_not_the_size(part):
    rng = np.random.default_rng(4)
    region = nuclei_image(128, 128, 0.25, rng)
    base = AcquisitionSettings(random_kernel=False, blur_sigma=(0.0, 0.0), sharpen_p=0.0, noise_p=0.0, jpeg_p=0.0,
                               stain=0.0, color=(0.0, 0.0, 0.0))
    on = {"blur": {"blur_sigma": (1.0, 1.2)}, "sharpen": {"sharpen_p": 1.0}, "noise": {"noise_p": 1.0},
          "jpeg": {"jpeg_p": 1.0}, "stain": {"stain": 0.3}}[part]
    settings = AcquisitionSettings(**{**base.__dict__, **on})
    out = simulate_acquisition(region, 128, settings, np.random.default_rng(0))
    assert out.shape == region.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - region.astype(int)).mean()
    assert diff > 0.5, part
    assert AcquisitionSettings().without(part) != AcquisitionSettings()


def test_acquisition_settings_are_checked():
    with pytest.raises(ConfigError):
        AcquisitionSettings(blur_sigma=(2.0, 1.0))
    with pytest.raises(ConfigError):
        AcquisitionSettings(jpeg_p=1.5)
    with pytest.raises(ConfigError, match="unknown acquisition part"):
        AcquisitionSettings().without("gamma")
    s = AcquisitionSettings()
    assert AcquisitionSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ConfigError, match="without upsampling"):
        simulate_acquisition(np.zeros((64, 64, 3), np.uint8), 128, s, np.random.default_rng(0))


def test_bach_images_load_square(shared_data):
    entries = [e for e in read_index_entries(shared_data / "bach" / "index.csv")][:2]
    src = load_source(entries[0])
    assert src.mpp == pytest.approx(0.56) and src.rgb.shape[:2] == (1152, 1536) and src.group == "bach"
