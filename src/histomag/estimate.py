"""The bridge: estimate a slide's or snapshot's resolution from its pixels.

A magnification predictor (the Hagnifinder regressor) sees crops taken at the file's own pixel
scale (level 0 via :meth:`Slide.read_native`: no resampling, except that pixels known not to be
square are squared first), from the most tissue-rich places; the estimate is the median of the
crops' predictions, and mpp follows as 10 / magnification.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from histomag.errors import NoTissueError
from histomag.resolution import DEFAULT_POWER_MPP
from histomag.slide.base import Slide
from histomag.tissue import tissue_mask_from_rgb

log = logging.getLogger(__name__)

#: predicts one magnification per RGB crop (batch-independent)
Predictor = Callable[[Sequence[np.ndarray]], Sequence[float]]

#: metadata and estimate disagreeing by more than this share is reported as a likely mislabel
DISAGREEMENT = 0.25


@dataclass(frozen=True)
class MagnificationEstimate:
    """A resolution recovered from pixels."""

    magnification: float
    n_crops: int
    spread: float  # interquartile range of the crop predictions, in magnification units

    @property
    def mpp(self) -> float:
        return DEFAULT_POWER_MPP / self.magnification


def tissue_crops(slide: Slide, crop: int, n_crops: int = 16, min_tissue: float = 0.6,
                 seed: int = 0) -> list[np.ndarray]:
    """Up to ``n_crops`` level-0 crops of ``crop`` px (smaller images: the whole image) on tissue.

    Raises:
        NoTissueError: no place with at least ``min_tissue`` tissue.
    """
    W, H = slide.dimensions
    overview, ds = slide.read_overview()
    mask = tissue_mask_from_rgb(overview, downsample=ds)
    cw, ch = min(crop, W), min(crop, H)
    xs = np.arange(0, W - cw + 1, max(cw // 2, 1))
    ys = np.arange(0, H - ch + 1, max(ch // 2, 1))
    boxes = np.array([(x, y, cw, ch) for y in ys for x in xs], dtype=np.float64)
    fractions = mask.fractions(boxes)
    good = np.flatnonzero(fractions >= min_tissue)
    if good.size == 0:
        raise NoTissueError(
            f"{slide.path.name}: no tissue found (best place has {100 * float(fractions.max(initial=0)):.0f}% tissue); "
            "give an H&E image that shows tissue"
        )
    rng = np.random.default_rng(seed)
    # prefer the most tissue-rich places, spread over the slide by a seeded shuffle among ties
    order = good[np.lexsort((rng.random(good.size), -fractions[good]))]
    chosen = order[:n_crops]
    return [slide.read_native(int(boxes[i, 0]), int(boxes[i, 1]), cw, ch) for i in chosen]


def estimate_magnification(slide: Slide, predict: Predictor, crop: int, n_crops: int = 16) -> MagnificationEstimate:
    """Median magnification predicted on tissue crops of ``slide`` at its own pixel scale."""
    crops = tissue_crops(slide, crop, n_crops)
    preds = np.asarray([float(p) for p in predict(crops)], dtype=np.float64)
    preds = preds[np.isfinite(preds)]
    if preds.size == 0:
        raise NoTissueError(f"{slide.path.name}: no usable prediction; give an H&E image that shows tissue")
    q1, med, q3 = np.percentile(preds, [25, 50, 75])
    log.info("%s: magnification %.3g from %d crops (IQR %.3g-%.3g)", slide.path.name, med, preds.size, q1, q3)
    return MagnificationEstimate(float(med), int(preds.size), float(q3 - q1))


def disagreement(slide: Slide, est: MagnificationEstimate) -> str | None:
    """A one-line warning when the slide's metadata and the estimate differ by more than 25%."""
    if slide.mpp is None or slide.mpp_source == "missing":
        return None
    meta = slide.magnification
    rel = abs(est.magnification - meta) / meta
    if rel <= DISAGREEMENT:
        return None
    return (f"{slide.path.name}: metadata says {meta:.3g}x ({slide.mpp:.4g} µm/px, {slide.mpp_source}) but the pixels "
            f"look like {est.magnification:.3g}x ({est.mpp:.3g} µm/px), {100 * rel:.0f}% apart: the scan may be "
            "mislabelled; check it, or override with --mpp")

