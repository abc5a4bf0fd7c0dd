"""Synthetic H&E: determinism, physical scale, one stain for all classes, a pyramid both readers
open, and the cohort folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from histomag.errors import ConfigError
from histomag.synth import make_cohort, read_cohort_csv, render_tissue, write_pyramidal_tiff
from histomag.synth.render import build_scene, render_into

THREE = ("normal", "tumor", "lymphoid")


@pytest.fixture(scope="module")
def slide3():
    """A 2048 px (512 µm) slide with all three classes."""
    return render_tissue(2048, 2048, seed=11, classes=THREE)


@pytest.fixture(scope="module")
def svs(tmp_path_factory, slide3) -> Path:
    return write_pyramidal_tiff(tmp_path_factory.mktemp("svs") / "s.svs", slide3.rgb, mpp=0.25, objective_power=40)


def area_mean(a: np.ndarray) -> np.ndarray:
    """2x2 block mean, rounded half up (written here independently of the writer)."""
    f = a.astype(np.float64)
    return np.floor((f[0::2, 0::2] + f[1::2, 0::2] + f[0::2, 1::2] + f[1::2, 1::2]) / 4 + 0.5)


def label_pixels(t, class_id: int) -> np.ndarray:
    """Boolean full-resolution mask of a class from the label mask."""
    ds = t.label_downsample
    big = np.kron(t.labels == class_id, np.ones((ds, ds), dtype=bool))
    return big[:t.rgb.shape[0], :t.rgb.shape[1]]


# ----- rendering -------------------------------------------------------------------------------
def test_same_seed_same_pixels_other_seed_other_pixels():
    a = render_tissue(384, 320, seed=3, classes=THREE)
    b = render_tissue(384, 320, seed=3, classes=THREE)
    c = render_tissue(384, 320, seed=4, classes=THREE)
    assert a.rgb.shape == (320, 384, 3) and a.rgb.dtype == np.uint8
    assert a.labels.shape == (20, 24)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.labels, b.labels)
    assert np.abs(a.rgb.astype(int) - c.rgb.astype(int)).mean() > 5


def test_result_does_not_depend_on_how_the_slide_is_cut_into_blocks():
    scene = build_scene(700, 500, seed=8, classes=THREE)
    whole = np.empty((500, 700, 3), np.uint8)
    render_into(scene, whole, block=1024, workers=1)
    scene2 = build_scene(700, 500, seed=8, classes=THREE)
    tiled = np.empty((500, 700, 3), np.uint8)
    render_into(scene2, tiled, block=192, workers=2)
    assert np.array_equal(whole, tiled)


def test_labels_hold_every_class_as_large_regions(slide3):
    assert slide3.class_names == {0: "background", 1: "normal", 2: "tumor", 3: "lymphoid"}
    assert slide3.labels.shape == (128, 128) and slide3.label_downsample == 16
    assert set(np.unique(slide3.labels)) == {0, 1, 2, 3}
    fractions = slide3.label_fractions()
    assert all(f >= 0.2 for f in fractions.values()), fractions
    # tissue sits inside white glass
    border = np.concatenate([slide3.labels[0], slide3.labels[-1], slide3.labels[:, 0], slide3.labels[:, -1]])
    assert (border == 0).mean() > 0.8
    glass = slide3.rgb[label_pixels(slide3, 0)]
    assert glass.mean() > 225
    # a 600 px (150 µm) field fits inside each class with >= 80 % purity
    for cid in (1, 2, 3):
        purity = ndi.uniform_filter((slide3.labels == cid).astype(float), size=600 // 16)
        assert purity.max() >= 0.8, (cid, purity.max())


def test_classes_share_one_colour_distribution(slide3):
    means = np.array([slide3.rgb[label_pixels(slide3, cid)].reshape(-1, 3).mean(axis=0) for cid in (1, 2, 3)])
    spread = means.max(axis=0) - means.min(axis=0)
    assert spread.max() < 6.0, means


def test_without_equalisation_classes_differ_in_colour():
    """The equalisation test above is sensitive: raw morphology alone changes the class colours."""
    scene = build_scene(1536, 1536, seed=11, classes=THREE)
    rgb = np.empty((1536, 1536, 3), np.uint8)
    render_into(scene, rgb, equalize=False)
    labels = scene.layout.labels(16)
    big = np.kron(labels, np.ones((16, 16), np.uint8))[:1536, :1536]
    means = np.array([rgb[big == cid].reshape(-1, 3).mean(axis=0) for cid in (1, 2, 3)])
    assert (means.max(axis=0) - means.min(axis=0)).max() > 10


def nucleus_diameters_um(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """Equivalent diameters of dark (haematoxylin-rich) blobs, split by a distance watershed."""
    from skimage.feature import peak_local_max
    from skimage.measure import label, regionprops
    from skimage.segmentation import watershed

    od_red = -np.log((rgb[..., 0].astype(float) + 0.5) / 255.5)  # haematoxylin absorbs red, eosin hardly
    mask = ndi.binary_opening(ndi.binary_fill_holes(od_red > 0.3), iterations=2)
    dist = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(dist, min_distance=max(2, round(2.5 / mpp)), labels=label(mask), exclude_border=False)
    markers = np.zeros(mask.shape, int)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    regions = regionprops(watershed(-dist, markers, mask=mask))
    d = np.array([r.equivalent_diameter_area for r in regions]) * mpp
    return d[d > 3.0]


@pytest.mark.parametrize("cls, lo, hi", [("lymphoid", 5.8, 8.2), ("tumor", 11.5, 19.0)])
def test_nuclei_have_physical_sizes(cls, lo, hi):
    fine = render_tissue(1024, 1024, mpp=0.25, seed=5, classes=(cls,))
    d = nucleus_diameters_um(fine.rgb, 0.25)
    assert len(d) > 50
    assert lo <= np.median(d) <= hi, np.median(d)
    # the same tissue at 0.5 µm/px: same size in µm, half the size in pixels
    coarse = render_tissue(512, 512, mpp=0.5, seed=5, classes=(cls,))
    d2 = nucleus_diameters_um(coarse.rgb, 0.5)
    assert lo <= np.median(d2) <= hi
    ratio = (np.median(d2) / 0.5) / (np.median(d) / 0.25)
    assert 0.4 <= ratio <= 0.6, ratio


def test_tumour_nuclei_are_larger_and_paler_inside_than_lymphocytes():
    lym = render_tissue(1024, 1024, seed=2, classes=("lymphoid",))
    tum = render_tissue(1024, 1024, seed=2, classes=("tumor",))
    assert np.median(nucleus_diameters_um(tum.rgb, 0.25)) > 1.6 * np.median(nucleus_diameters_um(lym.rgb, 0.25))
    # vesicular: the darkest 1 % of a lymphoid field is darker than that of a tumour field
    assert np.percentile(lym.rgb[..., 0], 1) < np.percentile(tum.rgb[..., 0], 1)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError):
        render_tissue(256, 256, classes=("normal", "adipose"))
    with pytest.raises(ConfigError):
        render_tissue(256, 256, classes=("tumor", "tumour"))
    with pytest.raises(ConfigError):
        render_tissue(256, 256, mpp=0.0)
    with pytest.raises(ConfigError):
        write_pyramidal_tiff("/tmp/never.svs", np.zeros((10, 10), np.uint8), mpp=0.25, objective_power=40)


# ----- the pyramidal TIFF ----------------------------------------------------------------------
def test_openslide_reads_mpp_power_levels_and_pixels(svs, slide3):
    import openslide

    rgb = slide3.rgb
    with openslide.OpenSlide(str(svs)) as s:
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.25)
        assert float(s.properties["openslide.objective-power"]) == pytest.approx(40)
        assert s.level_count >= 3
        assert s.dimensions == (2048, 2048)
        assert [round(d, 6) for d in s.level_downsamples[:3]] == [1, 2, 4]
        r0 = np.asarray(s.read_region((512, 256), 0, (600, 600)).convert("RGB")).astype(int)
        assert np.abs(r0 - rgb[256:856, 512:1112]).mean() < 3.0
        r1 = np.asarray(s.read_region((0, 0), 1, (1024, 1024)).convert("RGB")).astype(int)
        assert np.abs(r1 - area_mean(rgb)).mean() < 3.0
        assert "thumbnail" in s.associated_images


def test_tiffslide_reads_mpp_power_levels_and_pixels(svs, slide3):
    import tiffslide

    rgb = slide3.rgb
    with tiffslide.TiffSlide(str(svs)) as s:
        assert float(s.properties["tiffslide.mpp-x"]) == pytest.approx(0.25)
        assert float(s.properties["tiffslide.objective-power"]) == pytest.approx(40)
        assert s.level_count >= 3
        assert s.level_dimensions[:3] == ((2048, 2048), (1024, 1024), (512, 512))
        assert [round(d, 6) for d in s.level_downsamples[:3]] == [1, 2, 4]
        r1 = np.asarray(s.read_region((0, 0), 1, (1024, 1024), as_array=True))[..., :3].astype(int)
        assert np.abs(r1 - area_mean(rgb)).mean() < 3.0
        r2 = np.asarray(s.read_region((0, 0), 2, (512, 512), as_array=True))[..., :3].astype(int)
        assert np.abs(r2 - area_mean(area_mean(rgb))).mean() < 4.0


def test_lossless_pyramid_is_the_exact_area_mean(tmp_path):
    import openslide

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (1030, 1538, 3), dtype=np.uint8)  # odd halves on purpose
    path = write_pyramidal_tiff(tmp_path / "exact.svs", rgb, mpp=0.5, objective_power=20, compression="deflate",
                                tile=256, min_level_size=256)
    with openslide.OpenSlide(str(path)) as s:
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(s.properties["openslide.objective-power"]) == pytest.approx(20)
        assert s.level_dimensions[:3] == ((1538, 1030), (769, 515), (385, 258))
        assert np.array_equal(np.asarray(s.read_region((0, 0), 0, (1538, 1030)).convert("RGB")), rgb)
        level1 = np.asarray(s.read_region((0, 0), 1, (769, 515)).convert("RGB"))
        assert np.array_equal(level1, area_mean(rgb).astype(np.uint8))
        level2 = np.asarray(s.read_region((0, 0), 2, (384, 257)).convert("RGB"))
        assert np.array_equal(level2, area_mean(level1[:514, :768]).astype(np.uint8))
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was moved into place


# ----- the cohort ------------------------------------------------------------------------------
def test_cohort_writes_slides_masks_overviews_and_tables(tmp_path):
    import openslide

    done: list[int] = []
    records = make_cohort(tmp_path, n_slides=2, seed=1, size_px=(1280, 1024), progress=done.append)
    assert done == [1, 2]
    assert [r.slide_id for r in records] == ["synth-000", "synth-001"]
    assert [r.patient_id for r in records] == ["patient-000", "patient-001"]
    with open(tmp_path / "cohort.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["slide_id", "patient_id", "path", "label_mask", "mpp", "objective_power", "width",
                             "height"]
    assert read_cohort_csv(tmp_path / "cohort.csv") == records
    assert json.loads((tmp_path / "classes.json").read_text()) == {"0": "background", "1": "normal", "2": "tumor"}
    for r in records:
        assert (r.mpp, r.objective_power, r.width, r.height) == (0.25, 40.0, 1280, 1024)
        assert not Path(r.path).is_absolute()
        with openslide.OpenSlide(str(tmp_path / r.path)) as s:
            assert s.dimensions == (1280, 1024)
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        mask = np.asarray(Image.open(tmp_path / r.label_mask))
        assert mask.dtype == np.uint8 and mask.shape == (64, 80)
        assert set(np.unique(mask)) == {0, 1, 2}
        thumb = Image.open(tmp_path / f"{r.slide_id}.overview.png")
        assert thumb.size == (1024, 819)
        assert (tmp_path / f"{r.slide_id}.overview-labels.png").is_file()
    a = np.asarray(Image.open(tmp_path / "synth-000.overview.png"))
    b = np.asarray(Image.open(tmp_path / "synth-001.overview.png"))
    assert not np.array_equal(a, b)
    assert not list(tmp_path.glob(".*tmp"))
    # index.csv: the cohort as magnification sources, one group at the slides' own resolution
    from histomag.magnification.sources import load_source, read_index_entries

    entries = read_index_entries(tmp_path / "index.csv")
    assert [(Path(e.path).name, e.group, e.mpp_x) for e in entries] == [
        ("synth-000.svs", "synthetic", 0.25), ("synth-001.svs", "synthetic", 0.25)]
    src = load_source(entries[1])
    assert src.mpp == pytest.approx(0.25) and src.rgb.shape == (1024, 1280, 3)
