"""A tiled, pyramidal, Aperio-SVS-style TIFF writer that OpenSlide and TiffSlide both read.

Layout (what both readers expect of an ``.svs``):

* page 0: level 0, tiled; its ImageDescription starts with ``Aperio Image Library`` and carries
  ``|AppMag = 40|MPP = 0.25`` (OpenSlide -> ``openslide.objective-power`` / ``openslide.mpp-x``,
  TiffSlide -> ``tiffslide.objective-power`` / ``tiffslide.mpp-x``);
* page 1: a stripped thumbnail (OpenSlide's associated image ``thumbnail``);
* pages 2..: levels at downsample 2, 4, 8, ..., tiled. Each level is the exact 2x2 area mean of the
  one above (mean of each 2x2 block, rounded half up; an odd last row/column averages the pixels
  it has), so a read at 20x equals an area downsample of the 40x pixels.

Levels are computed one from the next in row strips, so writing needs about 1.4x the level-0
array in memory (the array itself plus the smaller levels).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from histomag.errors import ConfigError

#: first line of every ImageDescription (Aperio readers key on the leading ``Aperio ``).
DESCRIPTION_HEADER = "Aperio Image Library v12.0.15 (histomag synthetic)"

_COMPRESSIONS = {"jpeg": "jpeg", "deflate": "zlib", "zlib": "zlib", "lzw": "lzw", "none": None}


def area_halve(level: np.ndarray, strip_rows: int = 2048) -> np.ndarray:
    """Exact 2x2 area mean of an (H, W, C) uint8 image, output ``ceil(H/2) x ceil(W/2)``.

    Each output pixel is ``floor(sum / 4 + 1/2)`` of its 2x2 block; an odd last row or column
    averages only the pixels that exist (by repeating them, which gives the same mean).
    """
    h, w = level.shape[:2]
    oh, ow = (h + 1) // 2, (w + 1) // 2
    out = np.empty((oh, ow) + level.shape[2:], dtype=np.uint8)
    strip_rows -= strip_rows % 2
    for r0 in range(0, h, strip_rows):
        block = level[r0:r0 + strip_rows]
        if block.shape[0] % 2:
            block = np.concatenate([block, block[-1:]], axis=0)
        if block.shape[1] % 2:
            block = np.concatenate([block, block[:, -1:]], axis=1)
        s = block[0::2, 0::2].astype(np.uint16)
        s += block[1::2, 0::2]
        s += block[0::2, 1::2]
        s += block[1::2, 1::2]
        s += 2
        s >>= 2
        out[r0 // 2:r0 // 2 + s.shape[0]] = s
    return out


def level_shapes(width: int, height: int, min_level_size: int) -> list[tuple[int, int]]:
    """(width, height) of each level: halve (rounding up) while the larger side stays >= min_level_size."""
    shapes = [(width, height)]
    while True:
        w, h = shapes[-1]
        nw, nh = (w + 1) // 2, (h + 1) // 2
        if max(nw, nh) < min_level_size or (nw, nh) == (w, h):
            return shapes
        shapes.append((nw, nh))


def _fmt(value: float) -> str:
    return f"{value:g}" if float(value) != int(value) else str(int(value))


def write_pyramidal_tiff(path: str | os.PathLike, rgb: np.ndarray, *, mpp: float | None,
                         objective_power: float | None, tile: int = 256, min_level_size: int = 512,
                         compression: str = "jpeg", quality: int = 90, thumbnail_size: int = 1024,
                         extra_description: dict[str, str] | None = None) -> Path:
    """Write ``rgb`` as a tiled pyramidal Aperio-style TIFF, atomically (temp file + ``os.replace``).

    Args:
        path: destination (``.svs`` is conventional; the content, not the name, marks it Aperio).
        rgb: level-0 image, (H, W, 3) uint8.
        mpp: µm per pixel of level 0 (written as ``MPP`` and as TIFF resolution tags); None omits it.
        objective_power: written as ``AppMag``; None omits it.
        tile: tile edge in pixels (multiple of 16).
        min_level_size: add levels while the larger side of the next level is at least this.
        compression: ``"jpeg"`` (YCbCr 4:2:0, like Aperio), ``"deflate"``, ``"lzw"`` or ``"none"``.
        quality: JPEG quality (1-100).
        thumbnail_size: longest side of the stripped thumbnail page.
        extra_description: more ``key = value`` pairs for the description (no ``|`` allowed).

    Returns:
        The written path.
    """
    import tifffile

    path = Path(path)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ConfigError(f"write_pyramidal_tiff needs an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    if tile <= 0 or tile % 16:
        raise ConfigError(f"tile size {tile} must be a positive multiple of 16 (e.g. 256)")
    key = compression.lower()
    if key not in _COMPRESSIONS:
        raise ConfigError(f"unknown compression {compression!r}: use one of {', '.join(_COMPRESSIONS)}")
    if mpp is not None and not (np.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"mpp {mpp!r} must be a positive number such as 0.25")
    codec = _COMPRESSIONS[key]
    height, width = rgb.shape[:2]
    shapes = level_shapes(width, height, min_level_size)

    fields = {}
    if objective_power is not None:
        fields["AppMag"] = _fmt(objective_power)
    if mpp is not None:
        fields["MPP"] = f"{mpp:.6g}"
    fields["Filename"] = path.stem
    for k, v in (extra_description or {}).items():
        if "|" in f"{k}{v}":
            raise ConfigError(f"description entry {k!r} = {v!r} must not contain '|'")
        fields[k] = str(v)
    codec_name = {"jpeg": f"JPEG/RGB Q={quality}", "zlib": "Deflate/RGB", "lzw": "LZW/RGB"}.get(codec or "", "RAW/RGB")
    tail = "".join(f"|{k} = {v}" for k, v in fields.items())
    base = f"{DESCRIPTION_HEADER}\r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})"

    def page_kwargs(level_mpp: float | None) -> dict:
        kw: dict = {"photometric": "rgb", "compression": codec, "metadata": None}
        if codec == "jpeg":
            kw["compressionargs"] = {"level": int(quality)}
        if level_mpp is not None:
            kw["resolution"] = (1e4 / level_mpp, 1e4 / level_mpp)
            kw["resolutionunit"] = "CENTIMETER"
        return kw

    raw_bytes = rgb.nbytes * 4 // 3
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=raw_bytes > 3_500_000_000) as tw:
            workers = os.cpu_count() or 1
            tw.write(rgb, tile=(tile, tile), description=f"{base} {codec_name}{tail}",
                     maxworkers=workers, **page_kwargs(mpp))
            levels = [rgb]
            for (w, h) in shapes[1:]:
                levels.append(area_halve(levels[-1]))
                assert levels[-1].shape[:2] == (h, w)
            # the thumbnail comes from the smallest level that is still at least thumbnail_size
            thumb = _thumbnail(levels, thumbnail_size)
            tw.write(thumb, rowsperstrip=64,
                     description=f"{base} -> {thumb.shape[1]}x{thumb.shape[0]} - {codec_name}", **page_kwargs(None))
            for lvl, arr in enumerate(levels[1:], start=1):
                ds = 2 ** lvl
                lvl_mpp = None if mpp is None else mpp * ds
                tw.write(arr, tile=(tile, tile), maxworkers=workers,
                         description=f"{base} -> {arr.shape[1]}x{arr.shape[0]} {codec_name}{tail}",
                         **page_kwargs(lvl_mpp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _thumbnail(levels: list[np.ndarray], size: int) -> np.ndarray:
    from PIL import Image

    src = next((a for a in reversed(levels) if max(a.shape[:2]) >= size), levels[0])
    h, w = src.shape[:2]
    scale = min(1.0, size / max(h, w))
    out = (max(1, round(w * scale)), max(1, round(h * scale)))
    if out == (w, h):
        return np.ascontiguousarray(src)
    return np.asarray(Image.fromarray(src).resize(out, Image.Resampling.BOX))
