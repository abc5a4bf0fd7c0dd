"""The rulers' calibration: each cue's prior object size and between-field spread, the
systematic (between-source) floor and the interval's conformal multiplier, all from
leave-groups-out cross-validation over real sources with known resolution.

A *field reading* is one cue's measurement of one field (object diameter in px, how many objects,
their log-spread). An image's estimate pools its fields' readings (:func:`evidence.pool`); a
group declared as one acquisition pools all its images' fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from histomag.magnification.rulers.evidence import Evidence, Pooled, Z90, pool
from histomag.resolution import DEFAULT_POWER_MPP

SCHEMA_VERSION = 1
#: the smallest between-field log-sd a cue is given (a cue never claims more precision than this)
MIN_TAU = 0.05
#: the smallest systematic (between-source) log-sd
MIN_SYSTEMATIC = 0.03


@dataclass(frozen=True)
class FieldReading:
    """One cue's reading of one field of one image (``size_px`` None: nothing to measure)."""

    image: str
    cue: str
    size_px: float | None
    n: int
    spread: float
    group: str = ""
    true_magnification: float | None = None
    at_floor: bool = False


@dataclass(frozen=True)
class CueCalibration:
    prior_um: float   # the object diameter in µm (in the units the cue measures)
    tau: float        # between-field log-sd of that diameter
    min_objects: int = 20


@dataclass(frozen=True)
class RulerCalibration:
    cues: dict[str, CueCalibration]
    systematic: float
    q: float = Z90       # conformal multiplier: a 90% interval is centre ± q·se
    level: float = 0.9
    n: int = 0           # held-out estimates q was calibrated on
    groups: tuple[str, ...] = ()
    field: int = 768     # side (px) of the fields the readings were taken on

    def evidence(self, r: FieldReading) -> Evidence | None:
        c = self.cues.get(r.cue)
        if c is None or r.size_px is None or r.n < c.min_objects or not r.size_px > 0:
            return None
        log_mag = math.log(DEFAULT_POWER_MPP * r.size_px / c.prior_um)
        return Evidence(r.cue, log_mag, c.tau ** 2 + (r.spread ** 2) / max(r.n, 1), r.n, r.image)

    def floor_magnification(self, readings: Iterable[FieldReading]) -> float | None:
        """The highest magnification a set of readings at a ruler's pixel floor allows (objects of the
        floor's size at the cue's prior), or None when none of this calibration's cues is at its floor."""
        from histomag.magnification.rulers.nuclei import POPULATION_FLOOR_PX

        tops = [DEFAULT_POWER_MPP * POPULATION_FLOOR_PX / self.cues[r.cue].prior_um
                for r in readings if r.at_floor and r.cue in self.cues]
        return max(tops) if tops else None

    def pool(self, readings: Iterable[FieldReading]) -> Pooled | None:
        ev = [e for e in (self.evidence(r) for r in readings) if e is not None]
        return pool(ev, self.systematic) if ev else None

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "cues": {k: asdict(v) for k, v in self.cues.items()},
                "systematic": self.systematic, "q": self.q, "level": self.level, "n": self.n,
                "groups": list(self.groups), "field": self.field}

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write the calibration as JSON (atomically), with ``extra`` fields (e.g. the CV's figures)."""
        from histomag.data.atomic import atomic_write_bytes

        atomic_write_bytes(path, (json.dumps({**self.to_dict(), **(extra or {})}, indent=1) + "\n").encode())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RulerCalibration":
        if int(d.get("schema_version", 0)) > SCHEMA_VERSION:
            raise ValueError(f"schema version {d.get('schema_version')} is newer than this histomag reads "
                             f"({SCHEMA_VERSION}); upgrade histomag")
        cal = cls({k: CueCalibration(**v) for k, v in d["cues"].items()}, float(d["systematic"]), float(d["q"]),
                  float(d.get("level", 0.9)), int(d.get("n", 0)), tuple(d.get("groups", ())), int(d.get("field", 768)))
        cal.check()
        return cal

    def check(self) -> None:
        """ValueError naming the first value out of range (a damaged or hand-edited file)."""
        import math

        finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
        values = [("systematic", self.systematic, 0.0), ("q", self.q, 0.0), ("field", self.field, 1)]
        values += [(f"cues.{name}.prior_um", c.prior_um, 1e-9) for name, c in self.cues.items()]
        values += [(f"cues.{name}.tau", c.tau, 0.0) for name, c in self.cues.items()]
        values += [(f"cues.{name}.min_objects", c.min_objects, 1) for name, c in self.cues.items()]
        for key, value, low in values:
            if not finite(value) or value < low:
                raise ValueError(f"{key}={value!r} must be a finite number >= {low:g}")
        if not self.cues:
            raise ValueError("no cues")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level={self.level!r} must be in (0, 1)")


def _robust_sd(x: np.ndarray) -> float:
    x = np.asarray(x, float)
    if x.size < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def fit_cues(readings: Sequence[FieldReading], cues: Sequence[str], min_objects: int = 20,
             unit_of: dict[str, str] | None = None) -> RulerCalibration:
    """Priors, between-field spreads and the systematic floor from readings of known resolution.

    The prior of a cue is the median over sources (``unit_of`` maps a group to its source, e.g.
    ``breakhis-10x`` to ``breakhis``; default: each group is a source) of each source's median
    over its groups of their median implied diameters: a source counts once, however many images
    or groups it has; ``tau`` is the robust log-sd of the fields'
    implied diameters around their group's median, less the part their own object counts explain;
    ``systematic`` the robust log-sd of the groups' median implied diameters, the smallest over
    the cues (at least :data:`MIN_SYSTEMATIC`).
    """
    out: dict[str, CueCalibration] = {}
    sys_parts = []
    for cue in cues:
        rows = [r for r in readings if r.cue == cue and r.size_px and r.n >= min_objects and r.true_magnification]
        if not rows:
            continue
        um = np.array([r.size_px * DEFAULT_POWER_MPP / r.true_magnification for r in rows])
        groups = np.array([r.group for r in rows])
        med = {g: float(np.median(np.log(um[groups == g]))) for g in set(groups.tolist())}
        units: dict[str, list[float]] = {}
        for g, m in med.items():
            units.setdefault((unit_of or {}).get(g, g), []).append(m)
        prior = float(math.exp(np.median([np.median(v) for v in units.values()])))
        within = np.array([math.log(u) - med[g] for u, g in zip(um, groups)])
        noise = float(np.median([r.spread ** 2 / max(r.n, 1) for r in rows]))
        tau = math.sqrt(max(_robust_sd(within) ** 2 - noise, MIN_TAU ** 2))
        out[cue] = CueCalibration(prior, tau, min_objects)
        sys_parts.append(_robust_sd(np.array(list(med.values()))))
    systematic = max(float(min(sys_parts)) if sys_parts else 0.0, MIN_SYSTEMATIC)
    return RulerCalibration(out, systematic)


@dataclass
class HeldOut:
    image: str
    group: str
    true_magnification: float
    magnification: float | None
    se: float | None
    by_cue: dict[str, float] = field(default_factory=dict)
    floor_magnification: float | None = None  # every field at a ruler's floor: at most this magnification


def cross_validate(readings: Sequence[FieldReading], holdout_of: dict[str, str], cues: Sequence[str],
                   min_objects: int = 20) -> tuple[list[HeldOut], RulerCalibration, dict[str, RulerCalibration]]:
    """Leave-groups-out: for each hold-out unit, fit on the rest and estimate each held-out image.

    Returns:
        ``(held-out estimates, the calibration fitted on everything with q from them, the
        calibration that held each unit out, with that q)``.
    """
    units = sorted(set(holdout_of.values()))
    results: list[HeldOut] = []
    per_unit: dict[str, RulerCalibration] = {}
    by_image: dict[str, list[FieldReading]] = {}
    for r in readings:
        by_image.setdefault(r.image, []).append(r)
    for u in units:
        train = [r for r in readings if holdout_of[r.group] != u]
        cal = fit_cues(train, cues, min_objects, holdout_of)
        per_unit[u] = cal
        for image, rs in by_image.items():
            if holdout_of[rs[0].group] != u:
                continue
            p = cal.pool(rs)
            per_cue = {}
            for cue in cues:
                pc = cal.pool([r for r in rs if r.cue == cue])
                if pc is not None:
                    per_cue[cue] = math.exp(pc.centre)
            floor = cal.floor_magnification(rs) if p is None else None
            results.append(HeldOut(image, rs[0].group, float(rs[0].true_magnification),
                                   None if p is None else math.exp(p.centre), None if p is None else p.se, per_cue,
                                   floor))
    final = fit_cues(readings, cues, min_objects, holdout_of)
    z = [abs(math.log(h.magnification / h.true_magnification)) / h.se for h in results if h.magnification]
    if z:
        n = len(z)
        rank = min(1.0, math.ceil((n + 1) * final.level) / n)
        q = float(np.quantile(z, rank, method="higher"))
        final = RulerCalibration(final.cues, final.systematic, q, final.level, n, tuple(units), final.field)
        per_unit = {u: dataclasses.replace(c, q=q) for u, c in per_unit.items()}
    return results, final, per_unit
