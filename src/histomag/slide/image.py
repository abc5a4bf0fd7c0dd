"""Plain images (PNG, JPEG, TIFF without a pyramid) as one-level slides."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from histomag.errors import UnreadableSlideError
from histomag.slide.base import MppOverride, Slide, SlideMetadata

log = logging.getLogger(__name__)


Image.MAX_IMAGE_PIXELS = 1 << 31


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
        try:
            with Image.open(path) as img:
                img.load()
                mpp_x, mpp_y = _dpi_to_mpp(img)
                self.array, self.conversion = to_rgb_uint8(img)
                fmt = img.format or "image"
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise UnreadableSlideError(f"{path.name}: cannot decode it as an image ({_short(exc)})") from None
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
