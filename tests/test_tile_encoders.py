"""Tuple image encoders: every format round-trips through the dataset reader, and `tile` output reads back."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import nuclei_image
from histomag.data.atomic import atomic_write_image, atomic_write_png
from histomag.data.encoders import IMAGE_FORMATS, decode_rgb, encode_png, image_complete
from histomag.data.folder import DatasetFolder, TileSettings
from histomag.data.tuples import TupleDataset, read_rgb
from histomag.errors import DatasetError
from histomag.slide import open_slide
from histomag.tiling.fields import make_tuple_spec, read_tuple
from histomag.tiling.jobs import SlideJob, tile_slides

LOSSLESS = [name for name, fmt in IMAGE_FORMATS.items() if fmt.lossless]


def _rgb(h: int = 97, w: int = 131, seed: int = 0) -> np.ndarray:
    """Tissue-like texture with sharp edges, noise and saturated pixels (odd sizes on purpose)."""
    rgb = nuclei_image(h, w, 0.25, np.random.default_rng(seed), density=0.02)
    rgb[:3, :5] = 0
    rgb[-2:, -7:] = 255
    return rgb


def test_the_lossless_default_is_png():
    assert TileSettings().image_format == "png" and IMAGE_FORMATS["png"].lossless
    assert set(LOSSLESS) >= {"png", "qoi", "jxl"}


@pytest.mark.parametrize("name", list(IMAGE_FORMATS))
def test_every_format_round_trips_through_the_reader(tmp_path: Path, name: str) -> None:
    rgb = _rgb()
    path = tmp_path / f"t{IMAGE_FORMATS[name].suffix}"
    atomic_write_image(path, rgb, name, 95)
    assert image_complete(path)
    back = read_rgb(path)
    assert back.shape == rgb.shape and back.dtype == np.uint8
    if IMAGE_FORMATS[name].lossless:
        np.testing.assert_array_equal(back, rgb)
    else:
        assert np.abs(back.astype(int) - rgb).mean() < 6
    # a torn write is not complete, and a broken file is one DatasetError naming it
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    if name != "jxl":  # a bare JPEG XL codestream has no end marker (the atomic write guards it)
        assert not image_complete(path)
    path.write_bytes(b"\x00" * 40)
    assert not image_complete(path)
    with pytest.raises(DatasetError, match=str(path.name)):
        read_rgb(path)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (64, 64), (33, 17, 1), (33, 17, 2), (33, 17, 3),
                                   (33, 17, 4)])
@pytest.mark.parametrize("level", [1, 6])
def test_our_png_is_a_standard_png(shape: tuple[int, ...], level: int) -> None:
    arr = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(arr, level)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        back = np.asarray(im)
    np.testing.assert_array_equal(back, arr.reshape(back.shape))
    import imagecodecs  # a second, independent decoder (libpng / libspng)

    np.testing.assert_array_equal(imagecodecs.png_decode(data).reshape(arr.shape), arr)


def test_png_of_other_dtypes_goes_through_pillow(tmp_path: Path) -> None:
    arr = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30)
    atomic_write_png(tmp_path / "a.png", arr)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), arr)


def test_decode_rgb_gives_three_channels(tmp_path: Path) -> None:
    grey = np.random.default_rng(2).integers(0, 256, (20, 30), dtype=np.uint8)
    (tmp_path / "g.png").write_bytes(encode_png(grey))
    np.testing.assert_array_equal(decode_rgb(tmp_path / "g.png"), np.repeat(grey[..., None], 3, axis=2))


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    path = tmp_path / "s.png"
    Image.fromarray(nuclei_image(512, 512, 0.25, np.random.default_rng(0), density=0.01)).save(path)
    return path


@pytest.mark.parametrize("name", [None, *LOSSLESS])  # None: the default settings
def test_tile_output_reads_back_pixel_exactly(tmp_path: Path, slide: Path, name: str | None) -> None:
    extra = {} if name is None else {"image_format": name}
    settings = TileSettings((40.0, 20.0), 128, overlap=0.0, min_tissue=0.0, **extra)
    out = tmp_path / "ds"
    [res] = tile_slides([SlideJob(str(slide), mpp=0.25)], settings, out, progress=False)
    assert res.status == "ok" and res.tuples_written == 16
    assert json.loads((out / "dataset.json").read_text())["image_format"] == settings.image_format
    data = TupleDataset(out, [40, 20], labelled_only=False)
    with open_slide(slide, mpp=0.25) as s:
        spec = make_tuple_spec([40.0, 20.0], 128, "same-fov")
        for i in (0, 5, 15):
            row = data.rows[i]
            assert row["image_40x"].endswith(IMAGE_FORMATS[settings.image_format].suffix)
            field = next(f for f in _plan_fields(s, settings) if f"{res.slide_id}_{f.key}" == row["tuple_id"])
            want = read_tuple(s, spec, field)
            got = data.load(i)
            for w, g in zip(want, got):
                np.testing.assert_array_equal((g.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), w)


def _plan_fields(slide, settings: TileSettings):
    from histomag.tiling.jobs import plan_slide

    return [p.field for p in plan_slide(slide, SlideJob(str(slide.path), mpp=0.25), settings).fields]


def test_a_folder_without_image_format_reads_as_png(tmp_path: Path, slide: Path) -> None:
    """Folders written before the setting existed hold PNGs: they still read and resume as PNG."""
    out = tmp_path / "ds"
    settings = TileSettings((40.0, 20.0), 128, overlap=0.0, min_tissue=0.0)
    tile_slides([SlideJob(str(slide), mpp=0.25)], settings, out, progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    meta.pop("image_format")
    meta.pop("quality")
    (out / "dataset.json").write_text(json.dumps(meta))
    assert len(TupleDataset(out, [40, 20], labelled_only=False)) == 16
    [res] = tile_slides([SlideJob(str(slide), mpp=0.25)], settings, out, progress=False)
    assert res.tuples_resumed == 16 and res.tuples_written == 0


def test_torn_qoi_is_rewritten_on_resume(tmp_path: Path, slide: Path) -> None:
    out = tmp_path / "ds"
    settings = TileSettings((40.0, 20.0), 128, overlap=0.0, min_tissue=0.0, image_format="qoi")
    tile_slides([SlideJob(str(slide), mpp=0.25)], settings, out, progress=False)
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    victim = out / rows[2]["image_20x"]
    good = victim.read_bytes()
    victim.write_bytes(good[:-20])
    [res] = tile_slides([SlideJob(str(slide), mpp=0.25)], settings, out, progress=False)
    assert res.tuples_written == 1 and res.tuples_resumed == 15
    assert victim.read_bytes() == good
    assert len(DatasetFolder(out).read_manifest()) == 16
