"""What every ruler returns, and the registry the estimator finds rulers in by name."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from histomag.registry import Registry


@dataclass(frozen=True)
class RulerReading:
    """One ruler's reading of one field.

    Attributes:
        cue: the ruler's name (``nuclei``, ``lymphocytes``, ...).
        size_px: the typical object diameter in px, or None when the field offers nothing to measure.
        n: how many objects were measured.
        spread: the robust log-sd of their diameters (how consistent they are).
        objects: ``(k, 3)`` rows of ``y, x, diameter_px``: what was measured, for drawing the evidence.
        reason: why there is no size (``"12 nuclei, fewer than 20"``), else empty.
        at_floor: no size because the objects are at the ruler's pixel floor: the image's
            magnification is then at most the ruler's floor magnification.
    """

    cue: str
    size_px: float | None
    n: int
    spread: float
    objects: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    reason: str = ""
    at_floor: bool = False


Ruler = Callable[[np.ndarray], RulerReading]


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value at half the total weight (values in any order)."""
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][min(int(np.searchsorted(cum, cum[-1] / 2.0)), len(order) - 1)])


def log_spread(diameters: np.ndarray) -> float:
    """The robust log-sd of object diameters: the interquartile range of their logs / 1.349."""
    q1, q3 = np.percentile(diameters, [25, 75])
    return float(math.log(q3 / q1) / 1.349)

#: rulers by name: ``RULERS.get("nuclei")(rgb) -> RulerReading``
RULERS: Registry[Ruler] = Registry("ruler")
