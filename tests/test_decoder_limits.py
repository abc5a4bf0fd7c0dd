"""Decoder limits: a file whose header claims more than histomag decodes, or more than the file holds,
is one error line naming the file, and the rest of a batch goes on (issue 23, item 1)."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from helpers import textured
from histomag.cli.main import run
from histomag.errors import DecoderLimitError, UnreadableSlideError
from histomag.slide import open_slide
from histomag.slide.image import MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS_ENV, max_image_pixels

REPO = Path(__file__).resolve().parents[1]


# ----- hostile files, written as a user would meet them ------------------------------------------
def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose IHDR then claims width x height (CRC fixed, so only the size lies)."""
    Image.new("RGB", (8, 8), (200, 100, 150)).save(path)
    b = bytearray(path.read_bytes())
    assert b[12:16] == b"IHDR"
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(b))
    return path


def _patch_size(path: Path, width: int, height: int) -> None:
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        spots = [(tags["ImageWidth"].valueoffset, int(tags["ImageWidth"].dtype)),
                 (tags["ImageLength"].valueoffset, int(tags["ImageLength"].dtype))]
    b = bytearray(path.read_bytes())
    for (offset, dtype), value in zip(spots, (width, height)):
        fmt = "<I" if dtype == 4 else "<H"
        b[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(b))


def tiff_claiming(path: Path, width: int, height: int, *, tiled: bool = True) -> Path:
    """A TIFF with one tile (or strip) of data whose header claims width x height."""
    img = np.full((64, 64, 3), 200, np.uint8)
    if tiled:
        tifffile.imwrite(path, np.full((256, 256, 3), 200, np.uint8), tile=(256, 256), photometric="rgb")
    else:
        tifffile.imwrite(path, img, photometric="rgb", rowsperstrip=64)
    _patch_size(path, width, height)
    return path


def tiff_cut(path: Path, *, tiled: bool) -> Path:
    """A 512 px TIFF cut to half its bytes: the later tiles (strips) lie past the end of the file."""
    img = textured(512, 512)
    kw = {"tile": (128, 128)} if tiled else {"rowsperstrip": 32}
    tifffile.imwrite(path, img, photometric="rgb", **kw)
    b = path.read_bytes()
    path.write_bytes(b[:len(b) // 2])
    return path


def shared_tile_tiff(path, side, tile=256, value=180, mpp=0.25):
    """A classic TIFF, side x side px RGB in uncompressed tiles that all point at one stored tile."""
    n = (-(-side // tile)) ** 2
    data = np.full((tile, tile, 3), value, np.uint8).tobytes()
    entries = []  # (tag, type, count, payload bytes)
    def e(tag, typ, values):
        fmt = {3: "H", 4: "I", 5: "II"}[typ]
        vals = values if isinstance(values, (list, tuple)) else [values]
        payload = b"".join(struct.pack("<" + fmt, *(v if isinstance(v, tuple) else (v,))) for v in vals)
        entries.append((tag, typ, len(vals), payload))
    res = (int(1e4 / mpp), 1)
    e(256, 4, side); e(257, 4, side); e(258, 3, [8, 8, 8]); e(259, 3, 1); e(262, 3, 2); e(277, 3, 3)
    e(282, 5, [res]); e(283, 5, [res]); e(284, 3, 1); e(296, 3, 3)
    e(322, 4, tile); e(323, 4, tile)
    data_at = 8
    e(324, 4, [data_at] * n); e(325, 4, [len(data)] * n)
    entries.sort()
    ifd_at = data_at + len(data)
    extra_at = ifd_at + 2 + 12 * len(entries) + 4
    ifd, extra = [struct.pack("<H", len(entries))], []
    for tag, typ, count, payload in entries:
        if len(payload) <= 4:
            ifd.append(struct.pack("<HHI", tag, typ, count) + payload.ljust(4, b"\0"))
        else:
            ifd.append(struct.pack("<HHII", tag, typ, count, extra_at + sum(map(len, extra))))
            extra.append(payload + (b"\0" if len(payload) % 2 else b""))
    ifd.append(struct.pack("<I", 0))
    Path(path).write_bytes(b"II*\0" + struct.pack("<I", ifd_at) + data + b"".join(ifd) + b"".join(extra))
    return Path(path)


def good_png(path: Path) -> Path:
    Image.fromarray(textured(400, 400)).save(path)
    return path


def good_tiled_tiff(path: Path) -> Path:
    tifffile.imwrite(path, textured(1024, 1024), tile=(256, 256), photometric="rgb",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    return path


# ----- the limits, as the API raises them -----------------------------------------------------------
def test_png_over_the_pixel_limit_names_file_size_limit_and_fix(tmp_path):
    bomb = png_claiming(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(DecoderLimitError) as info:
        open_slide(bomb)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("bomb.png: ")
    assert "100,000 x 100,000 px" in msg and f"{MAX_IMAGE_PIXELS:,}" in msg
    assert "pyramidal TIFF" in msg and MAX_IMAGE_PIXELS_ENV in msg
    assert isinstance(info.value, UnreadableSlideError)  # callers catching the old type still catch it


def test_png_just_over_the_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "10000")
    png = good_png(tmp_path / "ok.png")  # 160,000 px, a real picture
    with pytest.raises(DecoderLimitError, match="400 x 400 px.*10,000 px"):
        open_slide(png)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "4e9")
    assert max_image_pixels() == 4_000_000_000
    with open_slide(png) as s:
        assert s.dimensions == (400, 400)


def test_bad_limit_setting_is_a_config_error(monkeypatch):
    from histomag.errors import ConfigError

    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(ConfigError, match=MAX_IMAGE_PIXELS_ENV):
        max_image_pixels()


def test_png_claiming_more_than_its_bytes_can_hold(tmp_path):
    forged = png_claiming(tmp_path / "forged.png", 20_000, 20_000)  # under the pixel limit: 1.2 GB if decoded
    with pytest.raises(DecoderLimitError, match=r"forged.png: .*20,000 x 20,000 px.*cannot hold"):
        open_slide(forged)


@pytest.mark.parametrize("tiled", [True, False])
def test_tiff_claiming_a_million_px_without_the_tiles(tmp_path, tiled):
    huge = tiff_claiming(tmp_path / "huge.tif", 10**6 if tiled else 65_000, 10**6 if tiled else 65_000, tiled=tiled)
    with pytest.raises(DecoderLimitError) as info:
        open_slide(huge)
    msg = str(info.value)
    assert msg.startswith("huge.tif: level 0 claims") and "but its tables list 1" in msg
    assert "truncated or corrupt" in msg and "\n" not in msg


@pytest.mark.parametrize("tiled", [True, False])
def test_truncated_tiff_is_refused_at_open(tmp_path, tiled):
    cut = tiff_cut(tmp_path / "cut.tif", tiled=tiled)
    noun = "tiles" if tiled else "strips"
    with pytest.raises(DecoderLimitError, match=rf"cut.tif: level 0: \d+ of its 16 {noun} lie past the end"):
        open_slide(cut)


def test_the_checks_pass_real_slides(shared_data):
    for name in ("cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs", "os-1-detail.ome.tif"):
        with open_slide(shared_data / "slides" / name) as s:
            assert s.dimensions[0] > 0


def test_a_200000_px_slide_has_no_pixel_limit(tmp_path):
    """A tiled slide is read tile by tile: 200,000 x 200,000 px (40 Gpx, far over the plain-image limit)
    with every tile listed opens through the direct tile reader and reads."""
    path = shared_tile_tiff(tmp_path / "big.tif", 200_000)
    assert 200_000**2 > max_image_pixels()
    with open_slide(path) as s:
        assert s.backend == "tiles" and s.dimensions == (200_000, 200_000)
        region = s.read_rect(199_000, 150_000, 512, 512, (512, 512))
        assert region.shape == (512, 512, 3) and int(region[0, 0, 0]) == 180


def test_load_rgb_square_raises_the_limit_error(tmp_path):
    from histomag.magnification.sources import load_rgb_square

    bomb = png_claiming(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(DecoderLimitError, match="bomb.png: .*100,000 x 100,000 px"):
        load_rgb_square(bomb, 0.5, 0.5)
    rgb, mpp = load_rgb_square(good_png(tmp_path / "ok.png"), 0.5, 0.5)
    assert rgb.shape == (400, 400, 3) and mpp == 0.5


# ----- the CLI: one line per bad file, the batch goes on --------------------------------------------
def _one_line_error(capsys, code, expect_code=2) -> str:
    err = capsys.readouterr().err.strip()
    assert code == expect_code, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("kind", ["bomb.png", "huge.tif"])
def test_info_is_one_line(capsys, tmp_path, kind):
    path = (png_claiming(tmp_path / kind, 100_000, 100_000) if kind.endswith(".png")
            else tiff_claiming(tmp_path / kind, 10**6, 10**6))
    err = _one_line_error(capsys, run(["info", str(path)]))
    assert kind in err


def test_tile_over_a_folder_goes_on(capsys, tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    tiff_claiming(folder / "huge.tif", 10**6, 10**6)
    good_tiled_tiff(folder / "good.tif")
    out = tmp_path / "ds"
    code = run(["tile", str(folder), "--mpp", "0.5", "--mags", "20", "--size", "128", "--out", str(out), "-q",
                "--max-tuples", "2"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "huge.tif" in errors[0] and "Traceback" not in captured.err
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert rows and all(r["slide_id"].startswith("good") for r in rows)
    # all of them bad: exit 2
    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    tiff_claiming(bad_only / "huge.tif", 10**6, 10**6)
    assert run(["tile", str(bad_only), "--mpp", "0.5", "--mags", "20", "--size", "128",
                "--out", str(tmp_path / "ds2"), "-q"]) == 2


def test_predict_gives_an_error_row_and_goes_on(capsys, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    png_claiming(folder / "a_bomb.png", 100_000, 100_000)
    good_png(folder / "b_good.png")
    code = run(["magnification", "predict", str(folder), "--n-crops", "4"])
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    assert [Path(r["path"]).name for r in records] == ["a_bomb.png", "b_good.png"]
    assert "100,000 x 100,000 px" in records[0]["error"] and "Traceback" not in captured.err
    assert code == (2 if "error" in records[1] else 1)
    assert run(["magnification", "predict", str(folder / "a_bomb.png")]) == 2


def test_audit_subprocess_every_bad_file_one_row(tmp_path):
    """In a fresh process (what a user runs): one error line per bad file, the good file audited, exit 1,
    and nothing else on stderr (no traceback, no library noise at exit)."""
    folder = tmp_path / "cohort"
    folder.mkdir()
    bad = {
        "bomb.png": png_claiming(folder / "bomb.png", 100_000, 100_000),
        "forged.png": png_claiming(folder / "forged.png", 20_000, 20_000),
        "huge.tif": tiff_claiming(folder / "huge.tif", 10**6, 10**6),
        "strips.tif": tiff_claiming(folder / "strips.tif", 65_000, 65_000, tiled=False),
        "cut_tiles.tif": tiff_cut(folder / "cut_tiles.tif", tiled=True),
        "cut_strips.tif": tiff_cut(folder / "cut_strips.tif", tiled=False),
    }
    good_png(folder / "good.png")
    out = tmp_path / "aud"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "histomag", "audit", str(folder), "--out", str(out), "-q"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == len(bad) and all(line.startswith("error: ") for line in lines), proc.stderr
    for name in bad:
        assert sum(line.startswith(f"error: {name}: ") for line in lines) == 1, (name, lines)
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(out / "audit.csv"))}
    assert rows["good.png"]["verdict"] != "error"
    assert all(rows[name]["verdict"] == "error" and name in rows[name]["error"] for name in bad)
