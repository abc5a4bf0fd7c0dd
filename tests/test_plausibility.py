"""Stated resolutions no microscope produces are reported, not used; plans are checked and bounded first.

The fixture is a small generic pyramidal TIFF like OpenSlide's ``boxes.tiff`` (300x250 px, a few
levels) whose resolution tags carry a default 72 dpi, which readers turn into 352.8 µm/px.
"""

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import MemorySlide, textured
from histomag.cli.main import run
from histomag.errors import ConfigError, DatasetError, MissingResolutionError, UpsampleError
from histomag.resolution import implausible_mpp_cause, is_plausible_mpp, is_plausible_objective_power

BACKENDS = ["openslide", "tiffslide"]


def _write_pyramid(path: Path, *, resolution: tuple[float, float], unit: str, ome: dict | None = None,
                   shape: tuple[int, int] = (250, 300)) -> Path:
    """A tiled pyramidal TIFF (levels halved down to ~32 px) with the given resolution tags."""
    tifffile = pytest.importorskip("tifffile")
    h, w = shape
    img = np.full((h, w, 3), 235, np.uint8)
    img[h // 5:4 * h // 5, w // 5:4 * w // 5] = (150, 60, 140)  # a purple box of "tissue"
    levels = [img]
    while min(levels[-1].shape[:2]) > 40:
        levels.append(np.ascontiguousarray(levels[-1][::2, ::2]))
    with tifffile.TiffWriter(path, ome=ome is not None) as tw:
        for i, level in enumerate(levels):
            kw = {"metadata": ome} if (ome is not None and i == 0) else {}
            tw.write(level, tile=(16, 16), photometric="rgb", compression="zlib", resolution=resolution,
                     resolutionunit=unit, subfiletype=1 if i else 0, **kw)
    return path


@pytest.fixture(scope="module")
def boxes72(tmp_path_factory) -> Path:
    return _write_pyramid(tmp_path_factory.mktemp("boxes") / "boxes72.tiff", resolution=(72, 72), unit="INCH")


@pytest.fixture(scope="module")
def boxes_025(tmp_path_factory) -> Path:
    # 40000 px per cm = 0.25 µm/px
    return _write_pyramid(tmp_path_factory.mktemp("boxes") / "boxes025.tiff", resolution=(40000, 40000),
                          unit="CENTIMETER")


def _one_line_error(capsys, code, expect_code=2):
    err = capsys.readouterr().err.strip()
    assert code == expect_code, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ----- the ranges -------------------------------------------------------------------------------
def test_plausible_ranges():
    assert is_plausible_mpp(0.25) and is_plausible_mpp(0.05) and is_plausible_mpp(42.3)  # 600 dpi flatbed
    for bad in (352.8, 264.6, 84.7, 0.001, 0.0, float("nan")):  # 72, 96 and 300 dpi; unit errors
        assert not is_plausible_mpp(bad)
    assert is_plausible_objective_power(40) and is_plausible_objective_power(1.25)
    assert not is_plausible_objective_power(0) and not is_plausible_objective_power(1000)
    assert "72 dpi" in implausible_mpp_cause(25400 / 72)
    assert "96 dpi" in implausible_mpp_cause(25400 / 96)
    assert "unit" in implausible_mpp_cause(0.0002)


# ----- info -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_info_on_72dpi_tiff_reports_and_ignores_it(boxes72, backend, capsys):
    t0 = time.monotonic()
    assert run(["info", str(boxes72), "--json", "--backend", backend]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["backend"] == backend and len(d["levels"]) >= 3
    assert d["mpp"] is None and d["magnification"] is None and d["mpp_source"] == "implausible-metadata"
    assert d["metadata_mpp"] == pytest.approx(352.78, rel=1e-3)
    assert len(d["warnings"]) == 1 and "352.8" in d["warnings"][0] and "72 dpi" in d["warnings"][0]
    assert run(["info", str(boxes72), "--backend", backend]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, out  # one line, naming the value and its likely cause
    assert "352.8" in warnings[0] and "72 dpi" in warnings[0] and "--mpp" in warnings[0]
    assert "implausible-metadata" in out
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("backend", BACKENDS)
def test_slide_stating_025_keeps_it(boxes_025, backend, capsys):
    assert run(["info", str(boxes_025), "--json", "--backend", backend]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mpp"] == pytest.approx(0.25) and d["mpp_source"] == "metadata-mpp" and d["warnings"] == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_ome_xml_is_read_and_checked(tmp_path, backend):
    from histomag.slide import open_slide

    ok = _write_pyramid(tmp_path / "ok.ome.tif", resolution=(1, 1), unit="NONE",
                        ome={"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    bad = _write_pyramid(tmp_path / "bad.ome.tif", resolution=(1, 1), unit="NONE",
                         ome={"PhysicalSizeX": 352.8, "PhysicalSizeY": 352.8})
    with open_slide(ok, backend=backend) as s:
        assert (s.mpp, s.mpp_source) == (pytest.approx(0.25), "metadata-mpp")
    with open_slide(bad, backend=backend) as s:
        assert s.mpp is None and s.mpp_source == "implausible-metadata" and s.metadata_mpp == (352.8, 352.8)


def test_plain_image_default_dpi_is_implausible_and_override_wins(tmp_path):
    from PIL import Image

    from histomag.slide import open_slide

    p = tmp_path / "snap.jpg"
    Image.fromarray(textured(64, 80)).save(p, dpi=(96, 96))
    with open_slide(p) as s:
        assert s.mpp is None and s.mpp_source == "implausible-metadata" and "96 dpi" in s.warnings[0]
        with pytest.raises(MissingResolutionError) as e:
            s.read((32.0, 32.0), 16, magnification=10)
        msg = str(e.value)
        assert "264.6" in msg and "mpp=" in msg and "--mpp" not in msg and "\n" not in msg
    with open_slide(p, mpp=0.5) as s:
        assert (s.mpp, s.mpp_source, s.warnings) == (0.5, "override", [])


def test_objective_power_outside_range_is_not_used():
    img = textured(64, 64)
    for power in (0.0, 1000.0):
        s = MemorySlide(img, mpp=None, objective_power=power)
        assert s.mpp is None and s.objective_power is None and s.mpp_source == "implausible-metadata"
        assert s.metadata_objective_power == power and "objective power" in s.warnings[0]
    s = MemorySlide(img, mpp=0.25, objective_power=1000.0)  # the mpp is fine: used, the power is not
    assert (s.mpp, s.mpp_source, s.objective_power, s.power_mpp) == (0.25, "metadata-mpp", None, 10.0)
    assert len(s.warnings) == 1
    s = MemorySlide(img, mpp=352.8, objective_power=20.0)  # an implausible mpp falls back to the power
    assert (s.mpp, s.mpp_source) == (0.5, "metadata-objective-power") and "352.8" in s.warnings[0]


def test_index_csv_with_implausible_mpp_is_refused(tmp_path):
    from histomag.magnification.magset import read_index_csv

    index = tmp_path / "index.csv"
    index.write_text("image,organ,mpp\na.png,breast,0.25\nb.png,breast,352.8\n")
    with pytest.raises(DatasetError) as e:
        read_index_csv(index)
    assert "row 3" in str(e.value) and "352.8" in str(e.value)


# ----- tile -------------------------------------------------------------------------------------
def test_tile_on_72dpi_tiff_refuses_in_seconds(boxes72, tmp_path, capsys):
    t0 = time.monotonic()
    err = _one_line_error(capsys, run(["tile", str(boxes72), "--mags", "20,10", "--size", "64",
                                       "--out", str(tmp_path / "a"), "-q"]))
    assert "no usable resolution" in err and "352.8" in err and "--mpp" in err
    # taken at its word, 20x is 700x above the scan: refused before any planning
    err = _one_line_error(capsys, run(["tile", str(boxes72), "--mags", "20,10", "--size", "64", "--mpp", "352.8",
                                       "--out", str(tmp_path / "b"), "-q"]))
    assert "above the scan resolution" in err and "--allow-upsample" in err
    # and with upsampling allowed the plan is counted first and refused with its numbers
    err = _one_line_error(capsys, run(["tile", str(boxes72), "--mags", "20,10", "--size", "64", "--mpp", "352.8",
                                       "--allow-upsample", "--out", str(tmp_path / "c"), "-q"]))
    assert "fields" in err and "300 x 250" in err and "10,000" in err
    assert time.monotonic() - t0 < 30


def test_tile_with_override_on_72dpi_tiff_works(boxes72, tmp_path, capsys):
    out = tmp_path / "ds"
    assert run(["tile", str(boxes72), "--mags", "10,5", "--size", "64", "--mpp", "1.0", "--min-tissue", "0.2",
                "--out", str(out), "-q"]) == 0
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert rows and rows[0]["mpp_source"] == "override"


# ----- plan checks in the library ---------------------------------------------------------------
def test_plan_checks_magnifications_before_the_tissue_mask(monkeypatch):
    import histomag.tiling.jobs as tiler
    from histomag.data.folder import TileSettings

    def no_mask(*a, **k):
        raise AssertionError("the tissue mask was computed before the upsample check")

    monkeypatch.setattr(tiler, "tissue_mask", no_mask)
    slide = MemorySlide(textured(256, 256), mpp=0.5, objective_power=20)
    with pytest.raises(UpsampleError) as e:
        tiler.plan_slide(slide, tiler.SlideJob("mem.svs"), TileSettings((40.0, 20.0), 64))
    assert "40x" in str(e.value) and "\n" not in str(e.value)


def test_field_count_is_arithmetic_and_bounded():
    from histomag.tiling.fields import check_plan_size, count_fields, make_tuple_spec, max_fields, plan_fields
    from histomag.tissue import TissueMask

    slide = MemorySlide(textured(512, 768), mpp=0.25)
    spec = make_tuple_spec([40, 20], 64)
    tissue = TissueMask(np.ones((64, 96), bool), (8.0, 8.0))
    fields = plan_fields(slide, spec, tissue, overlap=0.25, min_tissue=0.0)
    assert count_fields(slide.dimensions, 64, overlap=0.25)[0] == len(fields)
    assert max_fields((300, 250)) == 10_000 and max_fields((100_000, 100_000)) == 1_000_000
    with pytest.raises(ConfigError) as e:  # fields of a few pixels with an overlap close to 1
        check_plan_size(slide, 8.0, overlap=0.95)
    assert "fields" in str(e.value) and "768 x 512" in str(e.value)
    t0 = time.monotonic()
    with pytest.raises(ConfigError):
        plan_fields(slide, spec, tissue, placement="random", n_random=10**9)
    assert time.monotonic() - t0 < 5


def test_a_huge_member_size_is_refused():
    from histomag.tiling.fields import make_tuple_spec

    with pytest.raises(ConfigError) as e:
        make_tuple_spec([40, 20], 100_000)
    assert "MiB" in str(e.value) and "8192" in str(e.value)


def test_streaming_dataset_refuses_the_runaway_plan(boxes72):
    from histomag.data.folder import TileSettings
    from histomag.tiling.jobs import SlideJob
    from histomag.data.tuples import SlideTupleDataset

    settings = TileSettings((20.0, 10.0), 64, allow_upsample=False)
    with pytest.raises(UpsampleError):
        SlideTupleDataset([SlideJob(str(boxes72), mpp=352.8)], settings, labelled_only=False)
    settings = TileSettings((20.0, 10.0), 64, allow_upsample=True)
    with pytest.raises(ConfigError):
        SlideTupleDataset([SlideJob(str(boxes72), mpp=352.8)], settings, labelled_only=False)
