"""Low-resolution tissue mask and the tissue fraction of any level-0 field.

The mask is computed once per slide at a coarse resolution (8 µm/px by default): Otsu's threshold
on the HSV saturation (H&E tissue is coloured, glass is grey or white), clipped into a plausible
range so that a flat image (blank glass, or a field that is all tissue) is not split into noise,
plus a small optical-density floor and a black level. Morphology sizes are given in µm / µm² so
that they mean the same tissue at any mask resolution.

:meth:`TissueMask.fraction` answers "how much of this level-0 rectangle is tissue?" in O(1) from a
summed-area table, with fractional coordinates; :func:`box_sums` is shared with
:mod:`histomag.annotations`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from histomag.errors import ConfigError, NoTissueError

if TYPE_CHECKING:
    from histomag.slide.base import Slide

log = logging.getLogger(__name__)

METHODS = ("otsu", "od")

#: Otsu's saturation threshold (0..1) is clipped into this range (method "otsu").
DEFAULT_SATURATION_RANGE = (0.05, 0.15)
#: Otsu's optical-density threshold (sum over R, G, B of -log10(I/255)) is clipped into this range;
#: with method "otsu" the lower bound is also a floor every tissue pixel must pass.
DEFAULT_OD_RANGE = (0.1, 0.3)


# ----- summed-area tables ----------------------------------------------------------------------
def summed_area_table(mask: np.ndarray) -> np.ndarray:
    """Integral image with a zero first row and column: ``sat[y, x] == mask[:y, :x].sum()``.

    Args:
        mask: 2-D bool or integer array.

    Returns:
        Integer array of shape ``(h + 1, w + 1)`` (int32 when it cannot overflow, else int64).
    """
    h, w = mask.shape
    peak = int(mask.max()) if mask.size and mask.dtype != bool else 1
    dtype = np.int32 if h * w * max(peak, 1) < 2**31 else np.int64
    sat = np.zeros((h + 1, w + 1), dtype=dtype)
    np.cumsum(np.cumsum(mask, axis=0, dtype=dtype), axis=1, dtype=dtype, out=sat[1:, 1:])
    return sat


def _integral_at(sat: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Integral of the piecewise-constant mask over ``[0, x] x [0, y]`` (bilinear in the table)."""
    h1, w1 = sat.shape
    x0 = np.clip(np.floor(x).astype(np.intp), 0, w1 - 2)
    y0 = np.clip(np.floor(y).astype(np.intp), 0, h1 - 2)
    fx, fy = x - x0, y - y0
    s00 = sat[y0, x0].astype(np.float64)
    s01 = sat[y0, x0 + 1].astype(np.float64)
    s10 = sat[y0 + 1, x0].astype(np.float64)
    s11 = sat[y0 + 1, x0 + 1].astype(np.float64)
    return (s00 * (1 - fx) * (1 - fy) + s01 * fx * (1 - fy)
            + s10 * (1 - fx) * fy + s11 * fx * fy)


def box_sums(sat: np.ndarray, x0: np.ndarray | float, y0: np.ndarray | float,
             x1: np.ndarray | float, y1: np.ndarray | float) -> np.ndarray:
    """Sum of the mask over boxes ``[x0, x1) x [y0, y1)`` in (fractional) mask pixels.

    Each mask pixel counts as a uniform unit square, so a box covering half a pixel gets half of
    its value. Parts of a box outside the mask add nothing.

    Args:
        sat: table from :func:`summed_area_table`.
        x0, y0, x1, y1: box corners in mask pixels (scalars or arrays of one shape).

    Returns:
        float64 array of sums (0-d for scalar input).
    """
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    ax0 = np.clip(np.asarray(x0, dtype=np.float64), 0, w)
    ax1 = np.clip(np.asarray(x1, dtype=np.float64), 0, w)
    ay0 = np.clip(np.asarray(y0, dtype=np.float64), 0, h)
    ay1 = np.clip(np.asarray(y1, dtype=np.float64), 0, h)
    ax1, ay1 = np.maximum(ax1, ax0), np.maximum(ay1, ay0)
    total = (_integral_at(sat, ax1, ay1) - _integral_at(sat, ax0, ay1)
             - _integral_at(sat, ax1, ay0) + _integral_at(sat, ax0, ay0))
    return np.maximum(total, 0.0)


def level0_box_to_mask(downsample: tuple[float, float], left: float, top: float,
                       width: float, height: float) -> tuple[float, float, float, float, float]:
    """A level-0 rectangle in mask pixels: ``(x0, y0, x1, y1, area)``; refuses empty rectangles."""
    if not (width > 0 and height > 0):
        raise ConfigError(f"field {width}x{height} px has no area: give a positive width and height")
    dx, dy = downsample
    x0, y0 = left / dx, top / dy
    x1, y1 = (left + width) / dx, (top + height) / dy
    return x0, y0, x1, y1, (x1 - x0) * (y1 - y0)


# ----- the mask ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TissueMask:
    """A boolean tissue mask covering the whole slide at a low resolution.

    Attributes:
        mask: bool array (h, w); True where there is tissue.
        downsample: level-0 pixels per mask pixel in x and y.
        threshold: the threshold that was applied (saturation 0..1 for method "otsu", summed
            optical density for method "od"), for messages and reports; None when unknown.
        mpp: µm per mask pixel, when known.
    """

    mask: np.ndarray
    downsample: tuple[float, float] = (1.0, 1.0)
    threshold: float | None = None
    mpp: float | None = None

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask)
        if mask.ndim != 2 or mask.size == 0:
            raise ConfigError(f"tissue mask must be a non-empty 2-D array, got shape {mask.shape}")
        dx, dy = (float(d) for d in self.downsample)
        if not (dx > 0 and dy > 0 and math.isfinite(dx) and math.isfinite(dy)):
            raise ConfigError(f"tissue mask downsample {self.downsample!r} must be positive")
        object.__setattr__(self, "mask", mask.astype(bool, copy=False))
        object.__setattr__(self, "downsample", (dx, dy))

    @property
    def dimensions(self) -> tuple[float, float]:
        """(width, height) in level-0 pixels that the mask covers."""
        h, w = self.mask.shape
        return w * self.downsample[0], h * self.downsample[1]

    @cached_property
    def _sat(self) -> np.ndarray:
        return summed_area_table(self.mask)

    def fraction(self, left: float, top: float, width: float, height: float) -> float:
        """Share of tissue in a level-0 rectangle (fractional coordinates allowed).

        Parts of the rectangle outside the slide count as no tissue.

        Args:
            left, top: top-left corner in level-0 pixels.
            width, height: size in level-0 pixels (> 0).

        Returns:
            A number in [0, 1].
        """
        x0, y0, x1, y1, area = level0_box_to_mask(self.downsample, left, top, width, height)
        return float(min(1.0, box_sums(self._sat, x0, y0, x1, y1) / area))

    def fractions(self, boxes: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`fraction` for an (N, 4) array of ``(left, top, width, height)``."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if np.any(b[:, 2] <= 0) or np.any(b[:, 3] <= 0):
            raise ConfigError("every field needs a positive width and height")
        dx, dy = self.downsample
        x0, y0 = b[:, 0] / dx, b[:, 1] / dy
        x1, y1 = (b[:, 0] + b[:, 2]) / dx, (b[:, 1] + b[:, 3]) / dy
        return np.minimum(1.0, box_sums(self._sat, x0, y0, x1, y1) / ((x1 - x0) * (y1 - y0)))

    @property
    def tissue_fraction(self) -> float:
        """Share of the whole slide that is tissue."""
        return float(self.mask.mean())


# ----- computing it -----------------------------------------------------------------------------
def _otsu(values: np.ndarray, hi: float, bins: int = 512) -> float:
    """Otsu's threshold of ``values`` in ``[0, hi]`` from a ``bins``-bin histogram."""
    hist, edges = np.histogram(np.minimum(values, hi), bins=bins, range=(0.0, hi))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = m0 / w0
        mu1 = (m0[-1] - m0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    if between.max() <= 0:  # one populated bin: no split
        return float(centers[np.argmax(hist)])
    return float(edges[1:][np.argmax(between)])


def _as_rgb_uint8(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB uint8 array, alpha-valid mask or None) from gray, RGB or RGBA input."""
    a = np.asarray(rgb)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ConfigError(f"tissue detection needs an RGB image (h, w, 3), got shape {a.shape}")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
    alpha = a[..., 3] > 0 if a.shape[2] == 4 else None
    return a[..., :3], alpha


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return xx * xx + yy * yy <= radius * radius


def _clean(mask: np.ndarray, mpp: float, closing_um: float, min_object_um2: float,
           max_hole_um2: float) -> np.ndarray:
    """Closing, filling of small enclosed holes and removal of small objects (sizes in µm)."""
    from scipy import ndimage

    radius = int(round(closing_um / mpp))
    if radius >= 1:
        padded = np.pad(mask, radius)  # so tissue touching the border is not eroded
        padded = ndimage.binary_closing(padded, structure=_disk(radius))
        mask = padded[radius:-radius, radius:-radius]
    px_area = mpp * mpp
    max_hole = max_hole_um2 / px_area
    if max_hole >= 1:
        holes, n = ndimage.label(~mask)
        if n:
            sizes = np.bincount(holes.ravel())
            border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
            fill = sizes < max_hole
            fill[0] = False
            fill[border] = False
            mask = mask | fill[holes]
    min_object = min_object_um2 / px_area
    if min_object > 1:
        objects, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
        if n:
            keep = np.bincount(objects.ravel()) >= min_object
            keep[0] = False
            mask = keep[objects]
    return mask


def tissue_mask_from_rgb(rgb: np.ndarray, *, downsample: tuple[float, float] = (1.0, 1.0),
                         method: str = "otsu", threshold: float | None = None,
                         mpp: float | None = None, min_object_um2: float = 10_000.0,
                         max_hole_um2: float = 10_000.0, closing_um: float = 16.0,
                         saturation_range: tuple[float, float] = DEFAULT_SATURATION_RANGE,
                         od_range: tuple[float, float] = DEFAULT_OD_RANGE,
                         black_level: int = 30) -> TissueMask:
    """Tissue mask of a low-resolution RGB image of a whole slide.

    Method ``"otsu"`` (H&E and other coloured stains): tissue is where the HSV saturation is
    above Otsu's threshold clipped into ``saturation_range`` and the summed optical density is
    above ``od_range[0]``. Method ``"od"`` (faint or grey stains): tissue is where the summed
    optical density ``-log10(R/255) - log10(G/255) - log10(B/255)`` is above Otsu's threshold
    clipped into ``od_range``; note that uniformly dark-grey glass then counts as tissue.
    Pixels whose brightest channel is below ``black_level`` (scanner background, black ink) and
    fully transparent pixels are never tissue. The image is box-averaged over 3x3 px first (scan
    noise makes grey glass look saturated). The clipping keeps a flat image from being split
    into noise: blank glass gives an empty mask, an image that is all tissue a full one.

    Args:
        rgb: uint8 (h, w, 3) image (RGBA, gray and floats in 0..1 are converted).
        downsample: level-0 pixels per image pixel in x and y.
        method: "otsu" (saturation) or "od" (optical density).
        threshold: fixed threshold instead of Otsu's, on the method's scale: saturation 0..1 for
            "otsu" (typical H&E 0.05-0.15), summed optical density 0..~7 for "od" (0.1-0.3).
        mpp: µm per pixel of ``rgb``; without it the morphology below is skipped.
        min_object_um2: tissue pieces smaller than this area are removed (debris, dust).
        max_hole_um2: enclosed holes smaller than this area are filled.
        closing_um: radius of the morphological closing that bridges small gaps.
        saturation_range: bounds for Otsu's saturation threshold.
        od_range: bounds for Otsu's optical-density threshold; ``od_range[0]`` is also the
            optical-density floor of method "otsu".
        black_level: pixels with all channels below this (0..255) are not tissue; 0 disables.

    Returns:
        A :class:`TissueMask` of the image's size (possibly empty: see :func:`require_tissue`).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown tissue method {method!r}: use one of {', '.join(METHODS)}")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise ConfigError(f"tissue threshold {threshold!r} must be a non-negative number, e.g. 0.1")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"mask resolution {mpp!r} µm/px must be positive")
    image, alpha = _as_rgb_uint8(rgb)
    from scipy import ndimage

    # a 3x3 box average cuts the scan noise (which makes grey glass look saturated) by 3
    image = ndimage.uniform_filter(image, size=(3, 3, 1), mode="nearest")

    maxc = image.max(axis=2)
    od_lut = (-np.log10(np.maximum(np.arange(256), 1) / 255.0)).astype(np.float32)
    od = od_lut[image[..., 0]] + od_lut[image[..., 1]] + od_lut[image[..., 2]]
    valid = maxc >= black_level
    if alpha is not None:
        valid &= alpha

    if method == "otsu":
        minc = image.min(axis=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            channel = np.where(maxc > 0, (maxc.astype(np.float32) - minc) / maxc, np.float32(0))
        lo, hi, scale_max = saturation_range[0], saturation_range[1], 1.0
    else:
        channel = od
        lo, hi, scale_max = od_range[0], od_range[1], 3.0  # denser tissue is clipped to 3.0
    if threshold is None:
        values = channel[valid]
        t = _otsu(values, scale_max) if values.size else hi
        t = float(np.clip(t, lo, hi))
    else:
        t = float(threshold)
    mask = channel > t
    if method == "otsu":
        mask &= od > od_range[0]
    mask &= valid
    if mpp is not None:
        mask = _clean(mask, mpp, closing_um, min_object_um2, max_hole_um2)
    return TissueMask(mask, (float(downsample[0]), float(downsample[1])), threshold=t, mpp=mpp)


def tissue_mask(slide: "Slide", *, mpp: float = 8.0, method: str = "otsu",
                threshold: float | None = None, min_object_um2: float = 10_000.0,
                max_hole_um2: float = 10_000.0, closing_um: float = 16.0,
                saturation_range: tuple[float, float] = DEFAULT_SATURATION_RANGE,
                od_range: tuple[float, float] = DEFAULT_OD_RANGE,
                black_level: int = 30) -> TissueMask:
    """Tissue mask of a slide, read whole at about ``mpp`` µm/px from a low-resolution level.

    Args:
        slide: an open slide with a known resolution.
        mpp: resolution of the mask (the scan resolution if that is coarser).
        method, threshold, min_object_um2, max_hole_um2, closing_um, saturation_range, od_range,
            black_level: as in :func:`tissue_mask_from_rgb`.

    Returns:
        A :class:`TissueMask` covering the whole slide.
    """
    rgb = slide.read_whole(mpp)
    width, height = slide.dimensions
    h, w = rgb.shape[:2]
    downsample = (width / w, height / h)
    mask_mpp = slide.resolution.mpp * (downsample[0] + downsample[1]) / 2
    result = tissue_mask_from_rgb(
        rgb, downsample=downsample, method=method, threshold=threshold, mpp=mask_mpp,
        min_object_um2=min_object_um2, max_hole_um2=max_hole_um2, closing_um=closing_um,
        saturation_range=saturation_range, od_range=od_range, black_level=black_level)
    log.info("%s: tissue mask %dx%d at %.3g µm/px, %s threshold %.3g: %.1f%% tissue",
             slide.path.name, w, h, mask_mpp, method, result.threshold, 100 * result.tissue_fraction)
    return result


def require_tissue(mask: TissueMask, name: str, *, min_fraction: float = 0.0) -> TissueMask:
    """Return ``mask`` or raise :class:`NoTissueError` when it holds no (or too little) tissue.

    Args:
        mask: the tissue mask.
        name: slide or image name for the message.
        min_fraction: the mask must cover more than this share of the slide.
    """
    fraction = mask.tissue_fraction
    if fraction > min_fraction and mask.mask.any():
        return mask
    at = f" at threshold {mask.threshold:.3g}" if mask.threshold is not None else ""
    raise NoTissueError(
        f"no tissue found in {name}{at} ({100 * fraction:.2f}% of the slide): "
        "lower tissue_threshold (e.g. tissue_threshold=0.03) or check that the slide is not blank"
    )
