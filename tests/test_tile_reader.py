"""The direct tile path (backend ``tiles``): the same pixels as OpenSlide and TiffSlide, a bounded shared cache,
strict decoding of damaged tiles, and a fallback for files it does not take."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from histomag.errors import UnreadableSlideError
from histomag.slide import open_slide
from histomag.slide.tiles import TileCache, TileSlide
from histomag.tiling.fields import Field, make_tuple_spec, read_tuple


@pytest.fixture(scope="module")
def svs(tmp_path_factory) -> Path:
    from histomag.synth import render_tissue, write_pyramidal_tiff

    path = tmp_path_factory.mktemp("tiles") / "s.svs"
    write_pyramidal_tiff(path, render_tissue(2304, 1792, mpp=0.25, seed=3).rgb, mpp=0.25, objective_power=40)
    return path


REGIONS = [(0, 0, 300, 200), (250, 130, 517, 389), (1790, 1500, 514, 292)]


@pytest.mark.parametrize("other", ["openslide", "tiffslide"])
def test_same_pixels_as_the_other_backends_at_every_level(svs: Path, other: str) -> None:
    ours, theirs = open_slide(svs, backend="tiles"), open_slide(svs, backend=other)
    assert ours.backend == "tiles" and ours.level_dimensions == theirs.level_dimensions
    assert ours.mpp == theirs.mpp
    for level, ds in enumerate(ours.level_downsamples):
        W, H = ours.level_dimensions[level]
        for x, y, w, h in REGIONS:
            lx, ly = min(x, W - 1) // 2 ** level, min(y, H - 1) // 2 ** level
            w, h = min(w, W - lx), min(h, H - ly)
            a = ours._read_level(int(round(lx * ds)), int(round(ly * ds)), level, w, h)
            b = theirs._read_level(int(round(lx * ds)), int(round(ly * ds)), level, w, h)
            assert a.shape == (h, w, 3) and np.array_equal(a, b), (level, x, y)
    spec = make_tuple_spec([40, 20, 10], 256)
    for f in (Field(700.5, 640.0, 256), Field(128, 128, 256)):
        assert all(np.array_equal(a, b) for a, b in zip(read_tuple(ours, spec, f), read_tuple(theirs, spec, f)))


def test_real_slides_read_the_same_as_openslide(shared_data: Path) -> None:
    for name in ("cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs"):
        path = shared_data / "slides" / name
        ours, theirs = open_slide(path, backend="tiles", mpp=0.5), open_slide(path, backend="openslide", mpp=0.5)
        assert open_slide(path, mpp=0.5).backend == "tiles"  # auto takes the direct path for these
        W, H = ours.level_dimensions[0]
        region = (13, 29, 0, W - 40, min(H - 40, 900))
        a, b = ours._read_level(*region), theirs._read_level(*region)
        assert np.array_equal(a, b), name


def test_tiles_are_decoded_once_and_the_cache_is_bounded(svs: Path) -> None:
    slide = TileSlide(svs, cache_mb=4)
    first = slide._read_level(100, 100, 0, 400, 300)
    misses = slide.cache.misses
    again = slide._read_level(120, 110, 0, 380, 280)  # an overlapping field inside the same tiles
    assert slide.cache.misses == misses and slide.cache.hits > 0
    assert np.array_equal(first[10:290, 20:400], again)
    slide._read_level(0, 0, 0, 2304, 1792)  # the whole level: more than 4 MB of tiles
    assert slide.cache._bytes <= 4 * 2**20
    cache = TileCache(100)
    cache.put(("a",), np.zeros(60, np.uint8))
    cache.put(("b",), np.zeros(60, np.uint8))
    assert cache.get(("a",)) is None and cache.get(("b",)) is not None


def test_a_damaged_jpeg_tile_is_an_error_never_a_grey_tile(svs: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.svs"
    bad.write_bytes(svs.read_bytes())
    with tifffile.TiffFile(bad) as tif:
        page = tif.pages[0]
        i = len(page.dataoffsets) // 2
        offset, count = page.dataoffsets[i], page.databytecounts[i]
        tw, th, across = page.tilewidth, page.tilelength, -(-page.imagewidth // page.tilewidth)
    with open(bad, "r+b") as fh:
        fh.seek(offset + count // 3)
        fh.write(b"\x00" * (count // 3))
    slide = TileSlide(bad, cache_mb=0)
    x, y = (i % across) * tw, (i // across) * th
    with pytest.raises(UnreadableSlideError, match="read failed at level 0"):
        slide._read_level(x, y, 0, tw, th)
    assert slide._read_level(0, 0, 0, tw, th).std() > 0  # the undamaged tiles still read


def test_files_it_does_not_take_go_to_the_next_backend(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    plain = tmp_path / "strips.tif"
    tifffile.imwrite(plain, rgb)  # stripped, not tiled
    with pytest.raises(UnreadableSlideError, match="not for the direct tile reader .*not tiled"):
        TileSlide(plain, mpp_override=0.5)
    slide = open_slide(plain, mpp=0.5)
    assert slide.backend != "tiles" and np.array_equal(slide.read_native(0, 0, 400, 300), rgb)


def test_coarser_reads_decode_jpeg_tiles_scaled_at_equal_quality(tmp_path: Path) -> None:
    """A read 4x coarser than the only level decodes the JPEG tiles at 1/4 in the DCT domain: the same
    picture as a full decode plus area averaging (PSNR > 40 dB), never shifted; misaligned reads do not."""
    from histomag.synth import render_tissue

    rgb = render_tissue(2048, 1536, mpp=0.25, seed=4).rgb
    path = tmp_path / "one-level.tif"
    tifffile.imwrite(path, rgb, tile=(256, 256), compression="jpeg", photometric="rgb")
    ours = TileSlide(path, mpp_override=0.25, cache_mb=64, dct_scaling=True)
    theirs = open_slide(path, backend="tiffslide", mpp=0.25)
    exact = TileSlide(path, mpp_override=0.25, cache_mb=64)  # the default: full decodes, OpenSlide's pixels
    field = ((1024, 768), 256)
    assert np.array_equal(exact.read(*field, magnification=10), theirs.read(*field, magnification=10))
    assert {key[-1] for key in exact.cache._items} == {1}
    a = ours.read((1024, 768), 256, magnification=10)  # 1024 level px from x=512: on the 1/4 grid
    assert {key[-1] for key in ours.cache._items} == {4}  # decoded at 1/4, never at full size
    b = theirs.read((1024, 768), 256, magnification=10)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert a.shape == b.shape == (256, 256, 3) and 10 * np.log10(255 ** 2 / mse) > 40
    misaligned = ours.read((1023, 767), 256, magnification=10)  # starts at x=511: full decode, exact
    assert np.array_equal(misaligned, theirs.read((1023, 767), 256, magnification=10))
    whole = ours.read_whole(2.0)  # tissue masks: the whole level, 8x coarser
    assert whole.shape == (192, 256, 3)
    mse = np.mean((whole.astype(float) - theirs.read_whole(2.0)) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 40
