"""The rulers' estimator: fields spread over the tissue, each cue's reading of each field, pooled
by the evidence each gives into one magnification with a calibrated interval and the probability
of each standard objective. A batch declared as one acquisition pools all its images' fields.

Example:
    >>> from histomag.magnification.rulers.estimator import load_ruler_estimator
    >>> est = load_ruler_estimator()                       # the shipped calibration
    >>> e = est.estimate_rgb(rgb)                           # doctest: +SKIP
    >>> e.magnification, e.interval, e.most_likely_objective  # doctest: +SKIP
    (19.4, (15.1, 24.9), 20.0)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histomag.errors import CheckpointError, NoTissueError
from histomag.magnification.estimate import (FileEstimates, MagnificationEstimate, rgb_tissue_mask,
                                             slide_tissue_mask, spread_crops)
from histomag.magnification.rulers.base import RULERS, RulerReading
from histomag.magnification.rulers.nuclei import as_rgb
from histomag.magnification.rulers.calibration import FieldReading, RulerCalibration
from histomag.magnification.rulers.evidence import Pooled, Z90, objective_probabilities
from histomag.tissue import TissueMask

#: side (px) of the fields the rulers measure by default (the calibration states its own)
FIELD = 768
#: fields measured per image and per slide (non-overlapping, spread evenly over the tissue)
MAX_FIELDS_IMAGE = 16
MAX_FIELDS_SLIDE = 24
#: the share of a field that must be tissue
MIN_TISSUE = 0.4

#: the rulers' calibration shipped with histomag (made by ``make ruler-calibration``)
DEFAULT_CALIBRATION = Path(__file__).resolve().parents[1] / "weights" / "rulers.json"


def field_boxes(mask: TissueMask, width: int, height: int, max_fields: int, name: str,
                field: int = FIELD) -> list[tuple[int, int, int, int]]:
    """Non-overlapping ``field``-px boxes on tissue, spread over all of it (a smaller image: itself).

    Raises:
        NoTissueError: no place holds enough tissue.
    """
    return spread_crops(mask, width, height, field, max_fields, MIN_TISSUE, name, overlap=False)


def read_rulers(fields: Iterable[np.ndarray], cues: Sequence[str]) -> list[dict[str, RulerReading]]:
    """Per field, every cue's reading of it."""
    return [{cue: RULERS.get(cue)(np.ascontiguousarray(f)) for cue in cues} for f in fields]


def read_fields(fields: Iterable[np.ndarray], cues: Sequence[str], image: str = "image") -> list[FieldReading]:
    """Every cue's reading of every field, as field readings of ``image``."""
    return [FieldReading(image, cue, r.size_px, r.n, r.spread, at_floor=r.at_floor)
            for per_cue in read_rulers(fields, cues) for cue, r in per_cue.items()]


@dataclass(frozen=True)
class Evidence:
    """What the rulers measured, for a person to see: the field with the most objects, each ruler's
    reading of it (objects with their diameters), the priors, and the estimate of the whole image.

    Attributes:
        field: the field's RGB pixels.
        readings: per cue, its reading of that field.
        priors_um: per cue, the calibrated object diameter in µm.
        estimate: the image's estimate (all fields pooled).
        name: the file or image name.
    """

    field: np.ndarray
    readings: dict[str, RulerReading]
    priors_um: dict[str, float]
    estimate: MagnificationEstimate
    name: str


@dataclass
class RulerEstimator(FileEstimates):
    """Estimates magnifications from the rulers chosen and calibrated by leave-groups-out CV.

    Attributes:
        calibration: each cue's prior size and spread, the systematic floor, the interval's multiplier.
        source: where the calibration was loaded from.
    """

    calibration: RulerCalibration
    source: str = "shipped rulers"

    @property
    def cues(self) -> list[str]:
        return list(self.calibration.cues)

    def fields_rgb(self, rgb: np.ndarray, name: str = "image", mask: TissueMask | None = None,
                   max_fields: int = MAX_FIELDS_IMAGE) -> list[np.ndarray]:
        """The fields the rulers measure in a square-pixel image in memory."""
        h, w = rgb.shape[:2]
        mask = mask if mask is not None else rgb_tissue_mask(rgb)
        return [rgb[y:y + bh, x:x + bw] for x, y, bw, bh in field_boxes(mask, w, h, max_fields, name,
                                                                          self.calibration.field)]

    def field_boxes_slide(self, slide: Any, mask: TissueMask | None = None,
                          max_fields: int = MAX_FIELDS_SLIDE) -> list[tuple[int, int, int, int]]:
        """The level-0 boxes ``(left, top, width, height)`` of the fields the rulers measure in a slide."""
        mask = mask if mask is not None else slide_tissue_mask(slide)
        w, h = slide.dimensions
        return field_boxes(mask, w, h, max_fields, slide.path.name, self.calibration.field)

    def fields_slide(self, slide: Any, mask: TissueMask | None = None,
                     max_fields: int = MAX_FIELDS_SLIDE) -> list[np.ndarray]:
        """The fields the rulers measure in a slide or image file (level 0, square pixels)."""
        return [slide.read_native(x, y, bw, bh) for x, y, bw, bh in self.field_boxes_slide(slide, mask, max_fields)]

    def readings_rgb(self, rgb: np.ndarray, name: str = "image", mask: TissueMask | None = None,
                     max_fields: int = MAX_FIELDS_IMAGE) -> list[FieldReading]:
        """The field readings of a square-pixel image in memory."""
        return read_fields(self.fields_rgb(rgb, name, mask, max_fields), self.cues, name)

    def readings_slide(self, slide: Any, mask: TissueMask | None = None,
                       max_fields: int = MAX_FIELDS_SLIDE) -> list[FieldReading]:
        """The field readings of a slide or image file (level 0, square pixels)."""
        return read_fields(self.fields_slide(slide, mask, max_fields), self.cues, str(slide.path.name))

    def estimate_readings(self, readings: Sequence[FieldReading], name: str = "image") -> MagnificationEstimate:
        """One estimate from field readings (of one image, or of a whole acquisition).

        Raises:
            NoTissueError: no field held enough objects to measure.
        """
        pooled = self.calibration.pool(readings)
        if pooled is None and self.calibration.floor_magnification(readings) is not None:
            return self.floor_estimate(readings)
        if pooled is None:
            wanted = ", ".join(f"{c.min_objects} {cue}" for cue, c in self.calibration.cues.items())
            raise NoTissueError(f"{name}: nothing to measure (no field shows {wanted} or more; it may be blank, fat, "
                                "blood or out of focus); give its resolution (mpp=)")
        return self.from_pooled(pooled, len({r.image for r in readings}))

    def floor_estimate(self, readings: Sequence[FieldReading]) -> MagnificationEstimate:
        """The answer when every field's objects are at a ruler's pixel floor: at most the floor's
        magnification (interval down to 1x), with a caveat; it can never tell 2.5x from 5x."""
        from histomag.magnification.estimate import LOWEST_MAGNIFICATION
        from histomag.magnification.rulers.nuclei import POPULATION_FLOOR_PX

        cues = [c for c in self.calibration.cues if any(r.at_floor and r.cue == c for r in readings)]
        top = self.calibration.floor_magnification(readings)
        caveat = (f"{' and '.join(cues)} at the ruler's {POPULATION_FLOOR_PX:g} px floor: the magnification is at "
                  f"most about {top:.2g}x, and may be as low as {LOWEST_MAGNIFICATION:g}x")
        fields = sum(r.at_floor for r in readings)
        return MagnificationEstimate(top, fields, 0.0, 0.0, (LOWEST_MAGNIFICATION, top), self.calibration.level,
                                     caveat, "rulers", None, None, len({r.image for r in readings}))

    def from_pooled(self, pooled: Pooled, n_images: int = 1) -> MagnificationEstimate:
        """The estimate a pooled log-magnification states: its calibrated interval and objective odds."""
        cal = self.calibration
        half = cal.q * pooled.se
        sd = half / Z90  # the calibrated error as a normal log-sd
        odds = objective_probabilities(pooled.centre, sd)
        used = sum(1 for w in pooled.weights if w > 0)
        return MagnificationEstimate(
            float(math.exp(pooled.centre)), used, 0.0, float(pooled.se),
            (float(math.exp(pooled.centre - half)), float(math.exp(pooled.centre + half))), cal.level,
            method="rulers", objectives=odds, cues=pooled.by_cue(), n_images=n_images)

    def estimate_rgb(self, rgb: np.ndarray, n_crops: int | None = None, name: str = "image") -> MagnificationEstimate:
        """Estimate of a square-pixel image in memory (``n_crops``: at most that many fields)."""
        return self.estimate_readings(self.readings_rgb(as_rgb(rgb), name, max_fields=n_crops or MAX_FIELDS_IMAGE),
                                      name)

    def estimate_slide(self, slide: Any, n_crops: int | None = None) -> MagnificationEstimate:
        """Estimate of a slide or image opened with :func:`histomag.slide.open_slide` (``n_crops``: at most
        that many fields)."""
        return self.estimate_readings(self.readings_slide(slide, max_fields=n_crops or MAX_FIELDS_SLIDE),
                                      slide.path.name)

    def evidence(self, image: Any, name: str | None = None) -> Evidence:
        """The evidence behind an image's (an RGB array) or a slide's estimate.

        Raises:
            NoTissueError: nothing to measure.
        """
        if isinstance(image, np.ndarray):
            name = name or "image"
            fields = self.fields_rgb(as_rgb(image), name)
        else:
            name = name or image.path.name
            fields = self.fields_slide(image)
        per_field = read_rulers(fields, self.cues)
        readings = [FieldReading(name, cue, r.size_px, r.n, r.spread, at_floor=r.at_floor)
                    for fr in per_field for cue, r in fr.items()]
        estimate = self.estimate_readings(readings, name)
        best = max(range(len(fields)), key=lambda i: sum(r.n for r in per_field[i].values() if r.size_px))
        return Evidence(np.ascontiguousarray(fields[best]), per_field[best],
                        {c: v.prior_um for c, v in self.calibration.cues.items()}, estimate, name)

    def estimate_group(self, paths: Sequence[str | Path]) -> tuple[MagnificationEstimate | None, dict[str, str]]:
        """One estimate pooled over the fields of files that are one acquisition (one scanner or
        camera setting); a file that cannot be read or measured is left out and named.

        Returns:
            ``(the pooled estimate, or None when no file gave evidence; one line per file left out)``.
        """
        from histomag.errors import HistomagError
        from histomag.slide import open_slide

        readings: list[FieldReading] = []
        errors: dict[str, str] = {}
        for p in map(Path, paths):
            try:
                with open_slide(p) as slide:
                    mine = self.readings_slide(slide)
                if self.calibration.pool(mine) is None:
                    raise NoTissueError(f"{p.name}: nothing to measure (no field shows enough nuclei)")
                readings.extend(mine)
            except HistomagError as exc:
                errors[str(p)] = str(exc)
        if not readings:
            return None, errors
        return self.estimate_readings(readings, f"{len(paths)} files"), errors


def load_ruler_calibration(path: str | Path | None = None) -> RulerCalibration:
    """The rulers' calibration at ``path`` (default: the shipped one).

    Raises:
        CheckpointError: missing or not a rulers' calibration (one line).
    """
    p = Path(path) if path is not None else DEFAULT_CALIBRATION
    try:
        data = json.loads(p.read_text())
        return RulerCalibration.from_dict(data)
    except FileNotFoundError:
        raise CheckpointError(f"the rulers' calibration {p} is missing; reinstall histomag, or make one with "
                              "histomag.magnification.rulers.cv.calibrate") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # AttributeError: a list where a mapping belongs
        raise CheckpointError(f"{p} is not a rulers' calibration ({exc}); give a file written by "
                              "RulerCalibration.save") from None


def load_ruler_estimator(path: str | Path | None = None) -> RulerEstimator:
    return RulerEstimator(load_ruler_calibration(path), "shipped rulers" if path is None else str(path))
