"""Plain images (PNG, JPEG, TIFF without a pyramid) as one-level slides."""

from __future__ import annotations

import logging
import math
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from histomag.errors import ConfigError, DecoderLimitError, UnreadableSlideError
from histomag.slide.base import MppOverride, Slide, SlideMetadata

log = logging.getLogger(__name__)

#: the most pixels a plain image (PNG, JPEG, BMP, WebP, a TIFF no slide reader takes) may claim: it is decoded
#: whole in memory, as 3 bytes a pixel and more while it is converted. 2**30 px (32,768 x 32,768) is
#: 3 GiB of RGB; a larger picture belongs in a tiled pyramidal TIFF, which is read tile by tile and has
#: no such limit. A deliberate choice, stated in the README's conventions.
MAX_IMAGE_PIXELS = 1 << 30
#: an environment variable that overrides :data:`MAX_IMAGE_PIXELS` (a number of pixels, e.g. 4e9)
MAX_IMAGE_PIXELS_ENV = "HISTOMAG_MAX_IMAGE_PIXELS"
#: deflate compresses at most 1032:1, so a PNG needs this many times fewer bytes than its raw rows at least
DEFLATE_MAX_RATIO = 1032
#: the fewest bits a pixel of each PIL mode takes in a PNG (palette and grey may be 1-bit)
_MIN_PNG_BITS = {"1": 1, "L": 1, "P": 1, "LA": 16, "I;16": 16, "I;16B": 16, "I": 16, "RGB": 24, "RGBA": 32}


def max_image_pixels() -> int:
    """The pixel limit in force for plain images: ``HISTOMAG_MAX_IMAGE_PIXELS`` if set, else :data:`MAX_IMAGE_PIXELS`."""
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not text:
        return int(MAX_IMAGE_PIXELS)
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        value = 0
    if value <= 0:
        raise ConfigError(f"{MAX_IMAGE_PIXELS_ENV}={text!r} is not a number of pixels; set it to e.g. 4e9, or unset it")
    return value


# PIL's own guard sits at the same limit (it warns above it and refuses above twice it)
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def open_image(path: str | Path) -> Image.Image:
    """``PIL.Image.open`` with histomag's decoder limits, checked on the header before any pixel is decoded.

    Raises:
        DecoderLimitError: the header claims more pixels than :func:`max_image_pixels`, or (PNG) more
            pixel data than the file can hold.
        UnreadableSlideError: not an image PIL can open.
    """
    path = Path(path)
    limit = max_image_pixels()
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:  # more than twice the limit: PIL refuses before we see the size
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(path, _png_size(path), int(found.group(1)) if found else None, limit) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableSlideError(f"{path.name}: cannot decode it as an image ({_short(exc)})") from None
    try:
        _check_header(path, img, limit)
    except DecoderLimitError:
        img.close()
        raise
    return img


def _check_header(path: Path, img: Image.Image, limit: int) -> None:
    w, h = img.size
    if w * h > limit:
        raise _too_large(path, (w, h), w * h, limit)
    if img.format == "PNG":
        raw = h * (1 + -(-w * _MIN_PNG_BITS.get(img.mode, 1) // 8))
        size = path.stat().st_size
        if size * DEFLATE_MAX_RATIO < raw:
            raise DecoderLimitError(
                f"{path.name}: its header claims {w:,} x {h:,} px, at least {raw:,} bytes of pixel data, which a "
                f"{size:,}-byte PNG cannot hold (deflate packs at most {DEFLATE_MAX_RATIO}:1); the file is truncated "
                "or its header is corrupt: export it again")


def _too_large(path: Path, size: tuple[int, int] | None, pixels: int | None, limit: int) -> DecoderLimitError:
    claim = f"{size[0]:,} x {size[1]:,} px" if size else (f"{pixels:,} px" if pixels else "more pixels")
    return DecoderLimitError(
        f"{path.name}: its header claims {claim}, over histomag's limit of {limit:,} px for a plain image (decoded "
        f"whole in memory); convert it to a tiled pyramidal TIFF (e.g. vips tiffsave {path.name} out.tif --tile "
        f"--pyramid --compression jpeg) and open that, or, if it is genuine and the memory is there, raise the "
        f"limit with {MAX_IMAGE_PIXELS_ENV}")


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, or None for anything else."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def to_rgb_uint8(img: Image.Image) -> tuple[np.ndarray, str | None]:
    """Convert any PIL image to RGB uint8; return the array and a note on what was converted (or None)."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img), None
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        hi = arr.max() if arr.size else 1.0
        arr = np.clip(arr / (hi if hi > 0 else 1.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2), f"{mode} scaled to 8-bit grayscale RGB"
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB")), f"{mode} composited on white"
    return np.asarray(img.convert("RGB")), f"{mode} converted to RGB"


def _dpi_to_mpp(img: Image.Image) -> tuple[float | None, float | None]:
    """(mpp_x, mpp_y) from the image's dpi, as stated (implausible ones too: the slide drops them)."""
    dpi = img.info.get("dpi")
    if not dpi:
        return None, None
    out: list[float | None] = []
    for i in (0, 1):
        try:
            d = float(dpi[i] if isinstance(dpi, (tuple, list)) else dpi)
        except (TypeError, ValueError, IndexError):
            d = float("nan")
        out.append(25400.0 / d if math.isfinite(d) and d > 0 else None)
    return out[0], out[1]


class ImageSlide(Slide):
    """A single image held in memory as a one-level slide.

    Resolution comes from the override, else from a plausible DPI/resolution tag (a default 72 or
    96 dpi is reported, not used), else it is missing.
    """

    backend = "image"

    def __init__(self, path: Path, mpp_override: MppOverride | None = None) -> None:
        path = Path(path)
        with open_image(path) as img:
            try:
                img.load()
                mpp_x, mpp_y = _dpi_to_mpp(img)
                self.array, self.conversion = to_rgb_uint8(img)
                fmt = img.format or "image"
            except (OSError, SyntaxError, ValueError) as exc:
                raise UnreadableSlideError(f"{path.name}: cannot decode it as an image ({_short(exc)})") from None
            except MemoryError:
                raise DecoderLimitError(
                    f"{path.name}: {img.size[0]:,} x {img.size[1]:,} px do not fit in memory here; convert it to "
                    "a tiled pyramidal TIFF, or lower HISTOMAG_MAX_IMAGE_PIXELS so such files are refused up front"
                ) from None
        if self.conversion:
            log.info("%s: %s", path.name, self.conversion)
        h, w = self.array.shape[:2]
        meta = SlideMetadata(level_dimensions=((w, h),), level_downsamples=(1.0,), mpp_x=mpp_x, mpp_y=mpp_y,
                             vendor=fmt.lower())
        super().__init__(path, meta, mpp_override)

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        return np.ascontiguousarray(self.array[y:y + height, x:x + width])


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
