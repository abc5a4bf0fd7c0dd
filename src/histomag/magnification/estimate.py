"""The bridge: estimate a slide's or snapshot's resolution from its pixels, and say how sure it is.

A magnification predictor (the Hagnifinder regressor) sees crops taken at the file's own pixel
scale (level 0 via :meth:`Slide.read_native`: square pixels, no other resampling), spread over all of the tissue; the estimate
is the median of the crops' log-magnifications, mpp follows as 10 / magnification, and the spread
of the crops (median absolute deviation of the logs, ``log_mad``) sets the width of an interval
calibrated on held-out groups (:class:`IntervalCalibration`): a stated 90% interval is built to
contain the true mpp about 90% of the time on sources the model never saw.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from histomag.errors import ConfigError, NoTissueError
from histomag.resolution import DEFAULT_POWER_MPP
from histomag.slide.base import Slide
from histomag.tissue import TissueMask, tissue_mask_from_rgb

log = logging.getLogger(__name__)

#: predicts one magnification per RGB crop (batch-independent)
Predictor = Callable[[Sequence[np.ndarray]], Sequence[float]]

#: metadata and estimate disagreeing by more than this share is reported as a likely mislabel
DISAGREEMENT = 0.25


#: the smallest log-spread an interval is scaled by (a single crop, or crops that all agree)
MIN_LOG_SPREAD = 0.03

#: the lowest magnification an estimate's interval reaches down to when the ruler is at its floor
LOWEST_MAGNIFICATION = 1.0


@dataclass(frozen=True)
class IntervalCalibration:
    """A conformal interval in log-magnification: ``log(pred) ± q * s``.

    With ``scaled`` the half-width follows each estimate's own spread, ``s = max(log_mad, floor)``;
    otherwise ``s = 1`` (one width for every estimate). ``q`` is the ``level`` quantile of
    ``|log(pred / true)| / s`` over held-out estimates (leave-groups-out cross-validation), with
    the finite-sample correction of split conformal prediction, so on sources like those the
    interval holds at about ``level``. :meth:`fit` keeps whichever form is narrower on the
    calibration set (the spread helps only where it tracks the error).
    """

    q: float
    level: float = 0.9
    floor: float = MIN_LOG_SPREAD
    n: int = 0
    scaled: bool = True

    def half_width(self, log_mad: Any) -> Any:
        """Half-width in log-magnification for estimates with these spreads."""
        spread = np.maximum(np.asarray(log_mad, dtype=float), self.floor) if self.scaled else np.ones_like(
            np.asarray(log_mad, dtype=float))
        return self.q * spread

    def bounds(self, log_pred: Any, log_mad: Any) -> tuple[Any, Any]:
        """Lower and upper log-magnification bounds (arrays or floats)."""
        half = self.half_width(log_mad)
        return log_pred - half, log_pred + half

    @classmethod
    def fit(cls, true: Sequence[float], pred: Sequence[float], log_mad: Sequence[float], level: float = 0.9,
            floor: float = MIN_LOG_SPREAD) -> "IntervalCalibration":
        """Calibrate on held-out (true, predicted, spread) triples."""
        t, p, m = (np.asarray(v, dtype=float) for v in (true, pred, log_mad))
        if t.size == 0:
            raise ConfigError("no held-out estimates to calibrate an interval on")
        err = np.abs(np.log(p / t))
        rank = min(1.0, math.ceil((t.size + 1) * level) / t.size)
        fits = []
        for scaled in (True, False):
            spread = np.maximum(m, floor) if scaled else np.ones_like(m)
            q = float(np.quantile(err / spread, rank, method="higher"))
            fits.append(cls(q, float(level), float(floor), int(t.size), scaled))
        return min(fits, key=lambda c: float(np.median(c.half_width(m))))

    def to_dict(self) -> dict[str, Any]:
        return {"q": self.q, "level": self.level, "floor": self.floor, "n": self.n, "scaled": self.scaled}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IntervalCalibration":
        return cls(float(data["q"]), float(data.get("level", 0.9)), float(data.get("floor", MIN_LOG_SPREAD)),
                   int(data.get("n", 0)), bool(data.get("scaled", True)))


@dataclass(frozen=True)
class MagnificationEstimate:
    """A resolution recovered from pixels.

    Attributes:
        magnification: the estimate (10x ≙ 1 µm/px).
        n_crops: crops (fields) it was combined from.
        spread: interquartile range of the crop predictions, in magnification units.
        log_mad: the CNN: median absolute deviation of the crops' log-magnifications; the rulers:
            the pooled standard error in log-magnification.
        interval: ``(low, high)`` magnification interval at ``level`` (None: no calibration).
        level: the interval's nominal coverage.
        caveat: a one-line warning about this estimate (e.g. the nuclei-size ruler at its floor),
            or None.
        method: what made it (``rulers``, ``cnn``, ``nuclei``, ``combined``).
        objectives: the probability of each standard objective (x -> p), from the calibrated error.
        cues: per ruler: its own magnification, fields, objects and weight share in the estimate.
        n_images: images pooled into it (more than one: a batch declared as one acquisition).
    """

    magnification: float
    n_crops: int
    spread: float
    log_mad: float = 0.0
    interval: tuple[float, float] | None = None
    level: float = 0.9
    caveat: str | None = None
    method: str = ""
    objectives: dict[float, float] | None = None
    cues: dict[str, dict[str, Any]] | None = None
    n_images: int = 1

    @property
    def mpp(self) -> float:
        return DEFAULT_POWER_MPP / self.magnification

    @property
    def mpp_interval(self) -> tuple[float, float] | None:
        """``(low, high)`` µm per pixel (the magnification interval inverted)."""
        if self.interval is None:
            return None
        return DEFAULT_POWER_MPP / self.interval[1], DEFAULT_POWER_MPP / self.interval[0]

    @property
    def uncertainty_factor(self) -> float | None:
        """The interval as a factor either side of the estimate (``1.2``: from /1.2 to ×1.2; the
        larger of the two sides), or None without an interval. Never a percentage: a factor
        stays meaningful when the interval opens down to 1x."""
        if self.interval is None:
            return None
        lo, hi = self.interval
        return max(self.magnification / lo, hi / self.magnification)

    @property
    def most_likely_objective(self) -> float | None:
        """The standard objective with the highest probability (None without objective odds)."""
        if not self.objectives:
            return None
        return max(self.objectives, key=lambda o: self.objectives[o])  # type: ignore[index]

    def objective_text(self) -> str:
        """``'20x (p = 0.97)'``, or empty without objective odds."""
        best = self.most_likely_objective
        if best is None:
            return ""
        return f"{best:g}x (p = {self.objectives[best]:.2f})"  # type: ignore[index]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (magnification, mpp, interval on both and as a factor, fields, objectives, cues)."""
        out: dict[str, Any] = {"magnification": round(self.magnification, 3), "mpp": round(self.mpp, 5),
                               "n_crops": self.n_crops, "log_mad": round(self.log_mad, 4)}
        if self.method:
            out["method"] = self.method
        if self.interval is not None:
            lo, hi = self.mpp_interval  # type: ignore[misc]
            out.update(interval_level=self.level, uncertainty_factor=round(self.uncertainty_factor, 4),  # type: ignore[arg-type]
                       magnification_interval=[round(v, 3) for v in self.interval],
                       mpp_interval=[round(lo, 5), round(hi, 5)])
        if self.objectives:
            out["objective"] = self.most_likely_objective
            out["objective_probabilities"] = {f"{k:g}": round(v, 4) for k, v in self.objectives.items()}
        if self.cues:
            out["cues"] = self.cues
        if self.n_images != 1:
            out["n_images"] = self.n_images
        if self.caveat:
            out["caveat"] = self.caveat
        return out

    def describe(self) -> str:
        """``'17.6x (0.568 µm/px; 90% interval 15.2-20.3x, 0.49-0.66 µm/px, ×1.16; most likely objective
        20x (p = 0.93); 4 fields)'``."""
        text = f"{self.magnification:.3g}x ({self.mpp:.3g} µm/px"
        if self.interval is not None:
            lo, hi = self.mpp_interval  # type: ignore[misc]
            text += (f"; {self.level:.0%} interval {self.interval[0]:.3g}-{self.interval[1]:.3g}x, "
                     f"{lo:.3g}-{hi:.3g} µm/px, ×{self.uncertainty_factor:.2f}")
        if self.objectives:
            text += f"; most likely objective {self.objective_text()}"
        unit = ("field" if self.method == "rulers" else "crop") + ("" if self.n_crops == 1 else "s")
        text += f", {self.n_crops} {unit}" + (f" of {self.n_images} images" if self.n_images > 1 else "") + ")"
        return f"{text}; {self.caveat}" if self.caveat else text


class FileEstimates:
    """What every estimator offers over :meth:`estimate_slide`: a file's estimate as a JSON-ready record."""

    def estimate_file(self, path: str | Path, n_crops: int | None = None) -> dict[str, Any]:
        """One file's estimate as a record; bad input becomes an ``error`` field, never an exception."""
        from histomag.errors import HistomagError
        from histomag.slide import open_slide

        record: dict[str, Any] = {"path": str(path), "magnification": None, "mpp": None, "n_crops": 0}
        try:
            with open_slide(path) as slide:
                note = getattr(slide, "conversion", None)
                if note:
                    record["note"] = note
                est = self.estimate_slide(slide, n_crops) if n_crops else self.estimate_slide(slide)  # type: ignore[attr-defined]
            record.update(est.to_dict())
        except HistomagError as exc:
            record["error"] = str(exc)
        return record


def spread_crops(mask: TissueMask, width: int, height: int, crop: int, n_crops: int, min_tissue: float,
                 name: str, overlap: bool = True) -> list[tuple[int, int, int, int]]:
    """Up to ``n_crops`` boxes ``(x, y, w, h)`` on tissue, spread evenly over all of it.

    Candidates are a grid with half-crop steps (``overlap=False``: as many places as fit without
    overlapping, spread evenly); those with at least ``min_tissue`` tissue are
    kept (falling back to the richest quarter when none reach it) and ``n_crops`` of them are
    taken at even steps in reading order, so the estimate sees the whole image, not one corner.

    Raises:
        NoTissueError: no candidate has any meaningful tissue (< 20%).
    """
    cw, ch = min(crop, width), min(crop, height)
    if not overlap:  # as many non-overlapping places as fit, spread evenly (centred when only one fits)
        xs, ys = (np.linspace(0, n - c, k).round().astype(int) if k > 1 else np.array([(n - c) // 2])
                  for n, c, k in ((width, cw, width // cw), (height, ch, height // ch)))
    else:
        xs = np.arange(0, width - cw + 1, max(cw // 2, 1))
        ys = np.arange(0, height - ch + 1, max(ch // 2, 1))
    boxes = np.array([(x, y, cw, ch) for y in ys for x in xs], dtype=np.float64)
    fractions = mask.fractions(boxes)
    good = np.flatnonzero(fractions >= min_tissue)
    if good.size == 0:
        good = np.flatnonzero(fractions >= max(0.2, float(np.quantile(fractions, 0.75))))
    if good.size == 0 or fractions.max(initial=0) < 0.2:
        raise NoTissueError(
            f"{name}: no tissue found (best place has {100 * float(fractions.max(initial=0)):.0f}% tissue); "
            "give an H&E image that shows tissue"
        )
    pick = good[np.unique(np.linspace(0, good.size - 1, min(n_crops, good.size)).round().astype(int))]
    return [tuple(int(v) for v in boxes[i]) for i in pick]  # type: ignore[misc]


def _shrink(crop_rgb: np.ndarray, factor: float) -> np.ndarray:
    """A crop box-downsampled by ``factor`` (1: unchanged)."""
    if factor == 1.0:
        return crop_rgb
    from PIL import Image

    h, w = crop_rgb.shape[:2]
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop_rgb)).resize(size, Image.Resampling.BOX))


def slide_tissue_mask(slide: Slide) -> TissueMask:
    """The slide's tissue mask from its overview (needs no resolution)."""
    overview, ds = slide.read_overview()
    return tissue_mask_from_rgb(overview, downsample=ds)


def rgb_tissue_mask(rgb: np.ndarray) -> TissueMask:
    """The tissue mask of an image in memory (computed on at most ~1024 px)."""
    step = max(1, int(max(rgb.shape[:2]) // 1024))
    return tissue_mask_from_rgb(rgb[::step, ::step], downsample=(float(step), float(step)))


def tissue_crops(slide: Slide, crop: int, n_crops: int = 32, min_tissue: float = 0.6,
                 scale: float = 1.0, mask: TissueMask | None = None) -> list[np.ndarray]:
    """Up to ``n_crops`` crops of ``crop`` px spread over the tissue (smaller images: the whole image).

    With ``scale`` > 1 each crop covers ``crop * scale`` level-0 px and is box-downsampled to
    ``crop`` px: the slide as it would look at ``1 / scale`` of its magnification.

    Raises:
        NoTissueError: no place with enough tissue.
    """
    W, H = slide.dimensions
    mask = mask if mask is not None else slide_tissue_mask(slide)
    side = int(round(crop * scale))
    boxes = spread_crops(mask, W, H, side, n_crops, min_tissue, slide.path.name)
    return [_shrink(slide.read_native(x, y, w, h), scale) for x, y, w, h in boxes]


def rgb_tissue_crops(rgb: np.ndarray, crop: int, n_crops: int = 32, min_tissue: float = 0.6,
                     name: str = "image", scale: float = 1.0, mask: TissueMask | None = None) -> list[np.ndarray]:
    """Like :func:`tissue_crops`, for an image already in memory (square pixels)."""
    H, W = rgb.shape[:2]
    mask = mask if mask is not None else rgb_tissue_mask(rgb)
    side = int(round(crop * scale))
    boxes = spread_crops(mask, W, H, side, n_crops, min_tissue, name)
    return [_shrink(rgb[y : y + h, x : x + w], scale) for x, y, w, h in boxes]


def with_interval(est: MagnificationEstimate, calibration: IntervalCalibration | None) -> MagnificationEstimate:
    """``est`` with the interval ``calibration`` gives it (None: no interval)."""
    if calibration is None:
        return dataclasses.replace(est, interval=None, level=0.9)
    lo, hi = calibration.bounds(math.log(est.magnification), est.log_mad)
    return dataclasses.replace(est, interval=(float(math.exp(lo)), float(math.exp(hi))), level=calibration.level)


def combine(predictions: Sequence[float], calibration: IntervalCalibration | None = None,
            name: str = "image") -> MagnificationEstimate:
    """One estimate from per-crop magnifications: median of the logs, their MAD, the calibrated interval."""
    preds = np.asarray([float(p) for p in predictions], dtype=np.float64)
    preds = preds[np.isfinite(preds) & (preds > 0)]
    if preds.size == 0:
        raise NoTissueError(f"{name}: no usable prediction; give an H&E image that shows tissue")
    logs = np.log(preds)
    centre = float(np.median(logs))
    mad = float(np.median(np.abs(logs - centre)))
    q1, q3 = np.percentile(preds, [25, 75])
    return with_interval(MagnificationEstimate(float(math.exp(centre)), int(preds.size), float(q3 - q1), mad),
                         calibration)


def _scaled_predictions(get_crops: Callable[[float], list[np.ndarray]], predict: Predictor, short_side: int,
                        crop: int, tta: Sequence[float]) -> dict[float, list[float]]:
    """Predictions at each test-time scale, folded back to the image's own magnification (scale -> list)."""
    out: dict[float, list[float]] = {}
    for f in tta:
        if f != 1.0 and short_side < crop * f:
            continue  # too small to show at that scale
        out[f] = [float(p) * f for p in predict(get_crops(f))]
    return out


def rgb_predictions(rgb: np.ndarray, predict: Predictor, crop: int, n_crops: int = 32, name: str = "image",
                    tta: Sequence[float] = (1.0,)) -> dict[float, list[float]]:
    """Per test-time scale, the crop predictions of a square-pixel image (its tissue mask computed once)."""
    mask = rgb_tissue_mask(rgb)
    return _scaled_predictions(lambda f: rgb_tissue_crops(rgb, crop, n_crops, name=name, scale=f, mask=mask),
                               predict, min(rgb.shape[:2]), crop, tta)


def estimate_from_rgb(rgb: np.ndarray, predict: Predictor, crop: int, n_crops: int = 32,
                      calibration: IntervalCalibration | None = None, name: str = "image",
                      tta: Sequence[float] = (1.0,)) -> MagnificationEstimate:
    """Estimate the magnification of a square-pixel image held in memory.

    ``tta`` lists test-time scales: at ``f`` > 1 the image is also shown box-downsampled by ``f``
    and the predictions are multiplied back by ``f`` (scale consistency).
    """
    by_scale = rgb_predictions(rgb, predict, crop, n_crops, name, tta)
    return combine([p for preds in by_scale.values() for p in preds], calibration, name)


def estimate_magnification(slide: Slide, predict: Predictor, crop: int, n_crops: int = 32,
                           calibration: IntervalCalibration | None = None,
                           tta: Sequence[float] = (1.0,), mask: TissueMask | None = None) -> MagnificationEstimate:
    """Estimate from crops of ``slide`` at its own pixel scale, spread over its tissue (``tta``: see above)."""
    mask = mask if mask is not None else slide_tissue_mask(slide)
    by_scale = _scaled_predictions(lambda f: tissue_crops(slide, crop, n_crops, scale=f, mask=mask), predict,
                                   min(slide.dimensions), crop, tta)
    est = combine([p for preds in by_scale.values() for p in preds], calibration, slide.path.name)
    log.info("%s: %s", slide.path.name, est.describe())
    return est


#: side of the tissue crops the nuclei-size ruler measures (large enough for 20+ nuclei at 5x)
NUCLEI_CROP = 768
#: how many such crops it measures, and how much tissue each must hold
NUCLEI_N_CROPS = 4
NUCLEI_MIN_TISSUE = 0.4


def nuclei_predictions(crops: Sequence[np.ndarray]) -> list[float]:
    """Magnification implied by nuclear size in each crop (crops with too few nuclei are skipped)."""
    from histomag.magnification.rulers.nuclei import measure_nuclei, mpp_from_nuclei

    out = []
    for c in crops:
        try:
            m = measure_nuclei(np.ascontiguousarray(c))
            if m.at_floor:  # nuclei at the pixel floor: their own (saturated) size, which opens the interval
                m = dataclasses.replace(m, size_px=m.floor_size_px)
            out.append(DEFAULT_POWER_MPP / mpp_from_nuclei(m))
        except NoTissueError:
            continue
    return out


def nuclei_estimate(crops: Sequence[np.ndarray], calibration: IntervalCalibration | None = None,
                    name: str = "image") -> MagnificationEstimate:
    """The nuclei-size ruler's estimate from tissue crops (see :data:`NUCLEI_CROP`).

    Raises:
        NoTissueError: no crop holds enough nuclei.
    """
    return combine(nuclei_predictions(crops), calibration, name)


def slide_nuclei_crops(slide: Slide, mask: TissueMask | None = None) -> list[np.ndarray]:
    """The crops the nuclei-size ruler measures on a slide."""
    return tissue_crops(slide, NUCLEI_CROP, NUCLEI_N_CROPS, min_tissue=NUCLEI_MIN_TISSUE, mask=mask)


def rgb_nuclei_crops(rgb: np.ndarray, name: str = "image", mask: TissueMask | None = None) -> list[np.ndarray]:
    """The crops the nuclei-size ruler measures on an image in memory."""
    return rgb_tissue_crops(rgb, NUCLEI_CROP, NUCLEI_N_CROPS, min_tissue=NUCLEI_MIN_TISSUE, name=name, mask=mask)


def ruler_floor_magnification() -> float:
    """The magnification below which the nuclei-size ruler is at its floor (:data:`histomag.magnification.rulers.nuclei.FLOOR_PX`)."""
    from histomag.magnification.rulers.nuclei import FLOOR_PX, NUCLEUS_SIZE_UM

    return DEFAULT_POWER_MPP * FLOOR_PX / NUCLEUS_SIZE_UM


def floor_low_bound(log_low: Any, ruler_magnification: Any) -> Any:
    """The interval's lower log-magnification bound, taken down to :data:`LOWEST_MAGNIFICATION` where
    the ruler's estimate is at its floor (vectorised; used by inference and by the CV's coverage)."""
    at_floor = np.asarray(ruler_magnification, dtype=float) < ruler_floor_magnification()
    return np.where(at_floor, np.minimum(log_low, math.log(LOWEST_MAGNIFICATION)), log_low)


def open_below_ruler_floor(est: MagnificationEstimate, ruler: MagnificationEstimate) -> MagnificationEstimate:
    """``est`` with its interval open down to :data:`LOWEST_MAGNIFICATION` and a caveat, when the
    nuclei-size ruler's estimate ``ruler`` is at its floor (nuclei of about 3 px or less: a field
    at 2x and one at 4x look alike to it); otherwise ``est`` unchanged."""
    floor = ruler_floor_magnification()
    if ruler.magnification >= floor:
        return est
    caveat = (f"nuclei are at the ruler's {floor:.2g}x floor (about 3 px): the magnification may be lower, "
              f"down to {LOWEST_MAGNIFICATION:g}x")
    interval = est.interval
    if interval is not None:
        interval = (float(math.exp(floor_low_bound(math.log(interval[0]), ruler.magnification))), interval[1])
    return dataclasses.replace(est, interval=interval, caveat=caveat)


def combine_estimates(a: MagnificationEstimate, b: MagnificationEstimate,
                      calibration: IntervalCalibration | None = None) -> MagnificationEstimate:
    """The geometric mean of two estimates (CNN and nuclei ruler); spread: the larger of the two."""
    centre = 0.5 * (math.log(a.magnification) + math.log(b.magnification))
    both = MagnificationEstimate(float(math.exp(centre)), a.n_crops + b.n_crops, max(a.spread, b.spread),
                                 max(a.log_mad, b.log_mad))
    return with_interval(both, calibration)


def verdict(metadata_mpp: float | None, est: MagnificationEstimate) -> str:
    """``missing`` (no metadata), ``likely wrong`` or ``ok``.

    With a calibrated interval, metadata outside it is likely wrong; without one, metadata more
    than 25% from the estimate.
    """
    if metadata_mpp is None:
        return "missing"
    meta_mag = DEFAULT_POWER_MPP / metadata_mpp
    if est.interval is not None:
        lo, hi = est.interval
        return "ok" if lo <= meta_mag <= hi else "likely wrong"
    return "ok" if abs(est.magnification - meta_mag) / meta_mag <= DISAGREEMENT else "likely wrong"


def verdict_text(metadata_mpp: float | None, est: MagnificationEstimate) -> str:
    """One line a person can act on: ``'metadata 40x, pixels say 20x (p = 0.97): check the scan's
    resolution'``, ``'metadata 20x agrees with the pixels (20x, p = 0.95)'``, or for a file
    without a resolution what the pixels say and whether it can be used."""
    from histomag.magnification.rulers.evidence import ambiguous_objectives

    said = est.objective_text() or f"{est.magnification:.3g}x"
    pixels = f"{said}, {est.magnification:.3g}x = {est.mpp:.3g} µm/px"
    v = verdict(metadata_mpp, est)
    if v == "missing":
        pair = ambiguous_objectives(est.interval) if est.interval else None
        if pair:
            return (f"no resolution in the metadata; the pixels cannot tell {pair[0]:g}x from {pair[1]:g}x: "
                    "give the resolution (--mpp)")
        return f"no resolution in the metadata; the pixels say {pixels}: usable with --mpp estimate"
    meta = DEFAULT_POWER_MPP / float(metadata_mpp)  # type: ignore[arg-type]
    if v == "ok":
        return f"metadata {meta:.3g}x agrees with the pixels ({pixels})"
    return f"metadata {meta:.3g}x, pixels say {pixels}: check the scan's resolution, or override it (--mpp)"


def disagreement(slide: Slide, est: MagnificationEstimate) -> str | None:
    """A one-line warning when the slide's metadata lies outside the estimate's interval (or > 25% from it)."""
    if slide.mpp is None or slide.mpp_source == "missing":
        return None
    meta = slide.magnification
    if verdict(DEFAULT_POWER_MPP / meta, est) == "ok":
        return None
    rel = abs(est.magnification - meta) / meta
    where = (f"outside the {est.level:.0%} interval {est.interval[0]:.3g}-{est.interval[1]:.3g}x"
             if est.interval is not None else f"{100 * rel:.0f}% apart")
    return (f"{slide.path.name}: metadata says {meta:.3g}x ({slide.mpp:.4g} µm/px, {slide.mpp_source}) but the pixels "
            f"look like {est.magnification:.3g}x ({est.mpp:.3g} µm/px), {where}: the scan may be "
            "mislabelled; check it, or override it with mpp=")
