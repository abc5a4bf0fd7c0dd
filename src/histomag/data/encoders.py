"""Tuple image formats: how each is encoded, recognised as complete on disk, and decoded.

One :class:`ImageFormat` per ``TileSettings.image_format`` value, in :data:`IMAGE_FORMATS`. The
choice was measured (``benchmarks/tiling.py --end-to-end``, table in README "Benchmarks"):

- ``png`` (default, lossless): a plain 8-bit PNG written here — every row with PNG's *Up* filter
  (vectorised in numpy) and one IDAT deflated by libdeflate at level 1 (imagecodecs). Any PNG
  reader opens it; it is about 4x faster to write than Pillow's encoder at ``compress_level=1``
  and no larger. PNG stays the default because every training pipeline reads it.
- ``qoi`` (lossless): the fastest to write, about 1.5x larger than ``png``.
- ``jxl`` (lossless JPEG XL, effort 1): fast and the smallest lossless files, but few tools
  outside imagecodecs read it yet.
- ``jpeg`` (libjpeg-turbo through simplejpeg, 4:4:4, ``quality``) and ``webp`` (lossy, ``quality``).

The encoders release the GIL, so the tiler's writer threads encode in parallel.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: libdeflate level of tuple PNGs: 1 measured as fast as storing the rows uncompressed would be
#: to write at ~45% of their size; higher levels gain under 1% of size for a third less speed
PNG_LEVEL = 1
_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def _deflate(data: bytes, level: int) -> bytes:
    """A zlib stream (libdeflate when imagecodecs has it: several times faster than zlib at equal size)."""
    try:
        import imagecodecs

        if imagecodecs.DEFLATE.available:
            return imagecodecs.deflate_encode(data, level=level)
    except (ImportError, AttributeError):
        pass
    return zlib.compress(data, min(level, 9))


def encode_png(image: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """An 8-bit PNG of a ``(H, W)``, ``(H, W, 1..4)`` uint8 array: Up-filtered rows, libdeflate at ``level``.

    Other arrays (16-bit, bool, ...) go through Pillow.
    """
    arr = np.asarray(image)
    channels = 1 if arr.ndim == 2 else (arr.shape[2] if arr.ndim == 3 else 0)
    if arr.dtype != np.uint8 or channels not in _PNG_COLOUR_TYPES or 0 in arr.shape:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=min(level, 9))
        return buf.getvalue()
    h, w = arr.shape[:2]
    rows = np.ascontiguousarray(arr).reshape(h, w * channels)
    filtered = np.empty((h, w * channels + 1), np.uint8)
    filtered[:, 0] = 2  # filter type Up: each byte minus the one above it (mod 256)
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    return b"".join((PNG_SIGNATURE, _chunk(b"IHDR", header),
                     _chunk(b"IDAT", _deflate(filtered.data, level)), PNG_END))


def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    import simplejpeg

    # 4:4:4 (stain colour is signal) and the accurate DCT, as Pillow's encoder did, at libjpeg-turbo speed
    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB",
                                  colorsubsampling="444", fastdct=False)


def _encode_webp(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="WEBP", quality=quality, method=4)
    return buf.getvalue()


def _encode_qoi(rgb: np.ndarray, quality: int) -> bytes:
    import imagecodecs

    return imagecodecs.qoi_encode(np.ascontiguousarray(rgb))


def _encode_jxl(rgb: np.ndarray, quality: int) -> bytes:
    import imagecodecs

    return imagecodecs.jpegxl_encode(np.ascontiguousarray(rgb), lossless=True, effort=1)


def _webp_complete(head: bytes, tail: bytes, size: int) -> bool:
    return len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP" \
        and int.from_bytes(head[4:8], "little") + 8 == size


@dataclass(frozen=True)
class ImageFormat:
    """One tuple image format.

    Attributes:
        name: the ``image_format`` setting.
        suffix: the file suffix.
        lossless: whether decoding gives back the exact pixels.
        encode: ``(rgb uint8 array, quality) -> file bytes`` (formats without a quality ignore it).
        complete: ``(first 16 bytes, last 16 bytes, file size) -> bool``: the file's start and end
            markers are in place (a torn write fails it).
    """

    name: str
    suffix: str
    lossless: bool
    encode: Callable[[np.ndarray, int], bytes]
    complete: Callable[[bytes, bytes, int], bool]


IMAGE_FORMATS: dict[str, ImageFormat] = {f.name: f for f in (
    ImageFormat("png", ".png", True, lambda rgb, quality: encode_png(rgb),
                lambda head, tail, size: head.startswith(PNG_SIGNATURE) and tail.endswith(PNG_END)),
    ImageFormat("jpeg", ".jpg", False, _encode_jpeg,
                lambda head, tail, size: head.startswith(b"\xff\xd8") and tail.endswith(b"\xff\xd9")),
    ImageFormat("webp", ".webp", False, _encode_webp, _webp_complete),
    ImageFormat("qoi", ".qoi", True, _encode_qoi,
                lambda head, tail, size: head.startswith(b"qoif") and tail.endswith(b"\x00" * 7 + b"\x01")),
    # a bare JPEG XL codestream has no end marker: the signature (and the atomic write) must do
    ImageFormat("jxl", ".jxl", True, _encode_jxl, lambda head, tail, size: head.startswith(b"\xff\x0a")),
)}
#: the suffixes of tuple images, one per format
IMAGE_SUFFIXES = tuple(f.suffix for f in IMAGE_FORMATS.values())
_BY_SUFFIX = {f.suffix: f for f in IMAGE_FORMATS.values()} | {".jpeg": IMAGE_FORMATS["jpeg"]}


def encode_image(rgb: np.ndarray, image_format: str = "png", quality: int = 90) -> bytes:
    """The file bytes of ``rgb`` in ``image_format`` (ValueError for an unknown one)."""
    fmt = IMAGE_FORMATS.get(image_format)
    if fmt is None:
        raise ValueError(f"unknown image format {image_format!r}; valid: {', '.join(IMAGE_FORMATS)}")
    return fmt.encode(rgb, quality)


def image_complete(path: Path) -> bool:
    """The file exists and its format's start and end markers are there (any file for a foreign suffix)."""
    fmt = _BY_SUFFIX.get(path.suffix.lower())
    try:
        with open(path, "rb") as fh:
            if fmt is None:
                return path.is_file()
            head = fh.read(16)
            size = fh.seek(0, 2)
            fh.seek(max(0, size - 16))
            return fmt.complete(head, fh.read(16), size)
    except OSError:  # missing, or a folder
        return False


def decode_rgb(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a tuple image file (QOI and JPEG XL via imagecodecs, the rest via Pillow).

    Raises:
        OSError: the file cannot be read or decoded (the caller names it).
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".qoi", ".jxl"):
        import imagecodecs

        decode = imagecodecs.qoi_decode if suffix == ".qoi" else imagecodecs.jpegxl_decode
        data = Path(path).read_bytes()
        try:
            arr = decode(data)
        except Exception as exc:  # noqa: BLE001 - imagecodecs raises one error class per codec
            raise OSError(f"{type(exc).__name__}: {exc}") from None
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        return np.ascontiguousarray(arr[:, :, :3])
    from PIL import Image

    with Image.open(path) as img:
        return np.array(img.convert("RGB"))
