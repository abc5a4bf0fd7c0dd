"""`histomag info` and `histomag tile` on real and broken inputs: one-line errors, exit codes."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histomag.cli.main import run


def _one_line_error(capsys, code, expect_code=2):
    err = capsys.readouterr().err.strip()
    assert code == expect_code, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_info_missing_path(capsys, tmp_path):
    err = _one_line_error(capsys, run(["info", str(tmp_path / "nope.svs")]))
    assert "no such file" in err


def test_info_not_a_slide(capsys, tmp_path):
    bad = tmp_path / "notes.svs"
    bad.write_text("this is not a slide\n" * 100)
    err = _one_line_error(capsys, run(["info", str(bad)]))
    assert "not a readable slide" in err


def test_info_folder(capsys, tmp_path):
    err = _one_line_error(capsys, run(["info", str(tmp_path)]))
    assert "folder" in err


def test_info_png_without_resolution_then_override(capsys, tmp_path):
    p = tmp_path / "snap.png"
    Image.fromarray(np.full((64, 80, 3), 200, np.uint8)).save(p)
    assert run(["info", str(p), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mpp"] is None and data["mpp_source"] == "missing" and data["dimensions"] == [80, 64]
    assert run(["info", str(p), "--json", "--mpp", "0.5"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mpp"] == 0.5 and data["mpp_source"] == "override" and data["magnification"] == 20


def test_info_reads_plausible_dpi_but_ignores_72dpi(capsys, tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(p, dpi=(101600, 101600))  # 0.25 µm/px
    run(["info", str(p), "--json"])
    assert json.loads(capsys.readouterr().out)["mpp"] == pytest.approx(0.25, rel=1e-3)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(p, dpi=(72, 72))
    run(["info", str(p), "--json"])
    assert json.loads(capsys.readouterr().out)["mpp"] is None


def test_image_modes_are_converted(tmp_path):
    from histomag.slide import open_slide

    for mode, arr in [("L", np.full((16, 16), 90, np.uint8)), ("RGBA", np.zeros((16, 16, 4), np.uint8)),
                      ("I;16", np.full((16, 16), 40000, np.uint16))]:
        p = tmp_path / f"x_{mode.replace(';', '')}.png"
        Image.fromarray(arr, mode=mode if mode != "I;16" else None).save(p)
        with open_slide(p, mpp=0.25) as s:
            out = s.read((8.0, 8.0), 8, magnification=40)
        assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    # fully transparent RGBA becomes white, not black
    assert (out.max() > 0)


def test_cli_subprocess_has_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("histomag")
    if not exe.exists():
        pytest.skip("console script not installed")
    proc = subprocess.run([str(exe), "info", str(tmp_path / "missing.svs")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


# ----- the real slides in ../shared/data --------------------------------------------------------
def test_cmu_reports_20x(capsys, shared_data):
    assert run(["info", str(shared_data / "slides" / "cmu-1-small-region.svs"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mpp"] == pytest.approx(0.499) and d["objective_power"] == 20 and d["magnification"] == 20
    assert d["mpp_source"] == "metadata-mpp" and d["vendor"] == "aperio"


def test_tcga_without_mpp(capsys, shared_data, tmp_path):
    slide = shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
    assert run(["info", str(slide), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mpp"] is None and d["mpp_source"] == "missing" and len(d["levels"]) == 2
    err = _one_line_error(capsys, run(["tile", str(slide), "--mags", "20,10", "--size", "200",
                                       "--out", str(tmp_path / "ds"), "-q"]))
    assert "--mpp" in err and "no resolution" in err
    # with an override it tiles
    assert run(["tile", str(slide), "--mags", "20,10", "--size", "200", "--mpp", "0.5",
                "--out", str(tmp_path / "ds2"), "-q", "--max-tuples", "3"]) == 0


def test_cmu_tiles_at_20x_and_10x(capsys, shared_data, tmp_path):
    slide = shared_data / "slides" / "cmu-1-small-region.svs"
    out = tmp_path / "ds"
    assert run(["tile", str(slide), "--mags", "20,10", "--size", "300", "--out", str(out), "-q"]) == 0
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) >= 10
    r = rows[0]
    assert r["magnifications"] == "20;10" and r["mpp_source"] == "metadata-mpp"
    assert r["mpps"] == "0.499;0.998"
    a = np.asarray(Image.open(out / r["image_20x"]))
    b = np.asarray(Image.open(out / r["image_10x"]))
    assert a.shape == (300, 300, 3) and b.shape == (150, 150, 3)
    from histomag.tiling.fields import downsample_area

    assert np.abs(downsample_area(a, 150).astype(int) - b.astype(int)).max() <= 1
    # 40x is above this 20x scan: refused with the fix named
    err = _one_line_error(capsys, run(["tile", str(slide), "--mags", "40,20", "--size", "300",
                                       "--out", str(tmp_path / "up"), "-q"]))
    assert "--allow-upsample" in err


def test_batch_with_a_bad_slide_finishes_the_others(capsys, shared_data, tmp_path):
    good = shared_data / "slides" / "cmu-1-small-region.svs"
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 200)
    out = tmp_path / "ds"
    code = run(["tile", str(good), str(bad), str(tmp_path / "missing.svs"), "--mags", "20,10",
                "--size", "300", "--out", str(out), "-q", "--workers", "2"])
    captured = capsys.readouterr()
    assert code == 1
    assert "tiled 1 of 3 slides (2 failed)" in captured.out
    assert captured.err.count("error: ") == 2 and "Traceback" not in captured.err
    slides = list(csv.DictReader(open(out / "slides.csv")))
    assert [s["status"] for s in slides] == ["ok", "failed", "failed"]
    assert len(list(csv.DictReader(open(out / "manifest.csv")))) >= 10


def test_truncated_slide_is_reported(capsys, shared_data, tmp_path):
    src = shared_data / "slides" / "cmu-1-small-region.svs"
    cut = tmp_path / "cut.svs"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    err = _one_line_error(capsys, run(["tile", str(cut), "--mags", "20,10", "--size", "300",
                                       "--out", str(tmp_path / "ds"), "-q"]))
    assert "cut.svs" in err and ("corrupt" in err or "not a readable" in err)


# ----- synthetic pyramidal slides (no shared data needed) ---------------------------------------
@pytest.fixture(scope="module")
def synth_svs(tmp_path_factory):
    from histomag.synth import render_tissue, write_pyramidal_tiff

    t = render_tissue(1536, 1536, seed=3)
    path = tmp_path_factory.mktemp("svs") / "s.svs"
    write_pyramidal_tiff(path, t.rgb, mpp=0.25, objective_power=40)
    return path


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_synthetic_svs_reads_at_true_resolution(synth_svs, backend, capsys):
    assert run(["info", str(synth_svs), "--json", "--backend", backend]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["backend"] == backend and d["mpp"] == 0.25 and d["magnification"] == 40
    assert [lv["downsample"] for lv in d["levels"]] == [1, 2]  # 1536 px: levels down to >= 512 px


def test_truncated_synthetic_tiff(synth_svs, tmp_path, capsys):
    data = synth_svs.read_bytes()
    for share in (0.5, 0.9):
        cut = tmp_path / f"cut{int(share * 100)}.svs"
        cut.write_bytes(data[: int(len(data) * share)])
        err = _one_line_error(capsys, run(["info", str(cut)]))
        assert cut.name in err and ("corrupt" in err or "not a readable" in err)


@pytest.mark.parametrize("argv,needle", [
    (["tile"], "Missing argument"),
    (["tile", "x.svs", "--bogus"], "No such option"),
    (["nope"], "No such command"),
    (["tile", "x.svs", "--size", "abc"], "--size"),
])
def test_usage_errors_are_one_line(argv, needle, capsys):
    err = _one_line_error(capsys, run(argv))
    assert needle in err


def test_corrupt_tiles_mid_slide_skip_their_fields_and_name_them(tmp_path, capsys):
    """Zeroed JPEG tile bytes in the middle of a slide: those fields are reported (with coordinates) and
    skipped, the rest of the slide is tiled, and no blank or grey tile reaches the dataset."""
    import tifffile

    from histomag.synth import render_tissue, write_pyramidal_tiff

    slide = tmp_path / "bad.svs"
    write_pyramidal_tiff(slide, render_tissue(2048, 2048, mpp=0.25, seed=0).rgb, mpp=0.25, objective_power=40)
    with tifffile.TiffFile(slide) as tif:
        page = tif.pages[0]
        mid = len(page.dataoffsets) // 2
        damaged = [(page.dataoffsets[i], page.databytecounts[i]) for i in range(mid - 2, mid + 2)]
    with open(slide, "r+b") as fh:
        for offset, count in damaged:
            fh.seek(offset + count // 3)
            fh.write(b"\x00" * (count // 3))
    out = tmp_path / "ds"
    code = run(["tile", str(slide), "--mags", "40,20", "--size", "256", "--overlap", "0", "--out", str(out), "-q"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    skipped = [line for line in captured.err.splitlines() if "skipped: read failed" in line]
    assert f"{len(skipped)} field(s) skipped" in captured.err
    assert skipped and all("bad.svs: field at x=" in line and "(level-0 centre)" in line for line in skipped)
    with open(out / "slides.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["status"] == "ok" and int(row["fields_failed"]) == len(skipped) > 0
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == int(row["tuples_written"]) > 0
    for r in rows:  # every tuple that made it is real tissue, not a blank or grey fill
        assert np.asarray(Image.open(out / r["image_40x"]), dtype=float).std() > 5
