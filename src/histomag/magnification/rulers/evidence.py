"""Evidence from many fields and cues, pooled into one estimate of log-magnification, with an
interval that narrows with independent evidence and the probability of each standard objective.

Every cue (a ruler such as nuclear size, erythrocytes, lymphocytes, or the CNN) gives, per field,
a log-magnification ``m`` and a variance ``v = tau_c² + s²/n``: ``tau_c`` is how much the cue's
true object size varies between fields (calibrated by leave-groups-out CV), ``s`` the field's own
log-spread of object sizes and ``n`` how many objects it measured. Fields and cues are pooled by
inverse-variance weighting with Huber down-weighting of outliers (one failed field or image has
bounded influence), and the pooled standard error never falls below the ``systematic`` log-sd
(between-source differences that more fields of the same source cannot average away).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from histomag.magnification.rulers.base import weighted_median

#: the objectives (x) an estimate gives the probability of
STANDARD_OBJECTIVES: tuple[float, ...] = (2.5, 4.0, 5.0, 10.0, 20.0, 40.0, 60.0)
#: Tukey's biweight constant (in scaled standard errors) beyond which a field gets no weight
BIWEIGHT_C = 4.685
#: the two-sided normal quantile of a 90% interval
Z90 = 1.6448536269514722


@dataclass(frozen=True)
class Evidence:
    """One cue's reading of one field, in log-magnification."""

    cue: str
    log_mag: float
    var: float
    n_objects: int = 0
    source: str = ""   # the field or image it came from


@dataclass(frozen=True)
class Pooled:
    """A pooled log-magnification: ``centre``, its standard error ``se`` (systematic part included),
    the weights each piece of evidence got (after down-weighting), and the per-cue summary."""

    centre: float
    se: float
    weights: tuple[float, ...]
    evidence: tuple[Evidence, ...]

    def by_cue(self) -> dict[str, dict[str, Any]]:
        """Per cue: its own weighted log-magnification as x, the fields and objects it used and its weight share."""
        out: dict[str, dict[str, Any]] = {}
        total = sum(self.weights) or 1.0
        for cue in sorted({e.cue for e in self.evidence}):
            idx = [i for i, e in enumerate(self.evidence) if e.cue == cue]
            w = np.array([self.weights[i] for i in idx])
            m = np.array([self.evidence[i].log_mag for i in idx])
            mean = float(np.sum(w * m) / np.sum(w)) if w.sum() > 0 else float(np.median(m))
            out[cue] = {"magnification": round(math.exp(mean), 3), "fields": len(idx),
                        "objects": int(sum(self.evidence[i].n_objects for i in idx)),
                        "weight": round(float(w.sum() / total), 3)}
        return out


def pool(evidence: Sequence[Evidence], systematic: float = 0.0, c: float = BIWEIGHT_C,
         iterations: int = 30) -> Pooled:
    """Robust inverse-variance pooling: Tukey's biweight M-estimate started at the weighted median,
    with the variances scaled by a robust overdispersion factor (never below 1) when the evidence
    disagrees more than its own variances say. A field more than ``c`` scaled standard errors
    from the centre gets no weight, so one failed field or image cannot decide the answer.

    Raises:
        ValueError: no evidence.
    """
    ev = tuple(e for e in evidence if math.isfinite(e.log_mag) and e.var > 0)
    if not ev:
        raise ValueError("no evidence to pool")
    m = np.array([e.log_mag for e in ev])
    v = np.array([e.var for e in ev])
    w0 = 1.0 / v
    centre = weighted_median(m, w0)
    # robust overdispersion: the weighted median of the squared standardised residuals against
    # that of a chi-square with one degree of freedom (0.455)
    phi = max(1.0, weighted_median((m - centre) ** 2 / v, w0) / 0.455) if len(m) > 2 else 1.0
    scale = np.sqrt(v * phi)
    w = w0
    for _ in range(iterations):
        u = (m - centre) / (c * scale)
        w = w0 * np.where(np.abs(u) < 1, (1 - u ** 2) ** 2, 0.0)
        if w.sum() <= 0:
            w = w0
            break
        new = float(np.sum(w * m) / np.sum(w))
        if abs(new - centre) < 1e-8:
            centre = new
            break
        centre = new
    se = math.sqrt(phi / float(np.sum(w)) + systematic ** 2)
    return Pooled(float(centre), se, tuple(float(x) for x in w), ev)


def objective_probabilities(log_mag: float, sd: float,
                            objectives: Sequence[float] = STANDARD_OBJECTIVES) -> dict[float, float]:
    """The probability of each standard objective given an estimate ``exp(log_mag)`` whose
    calibrated error is normal in log-magnification with standard deviation ``sd`` (a uniform
    prior over the objectives)."""
    sd = max(float(sd), 1e-6)
    logs = np.log(np.asarray(objectives, dtype=float))
    ll = -0.5 * ((log_mag - logs) / sd) ** 2
    p = np.exp(ll - ll.max())
    p /= p.sum()
    return {float(o): float(pi) for o, pi in zip(objectives, p)}


def ambiguous_objectives(interval: tuple[float, float], objectives: Sequence[float] = STANDARD_OBJECTIVES,
                         ratio: float = 2.0) -> tuple[float, float] | None:
    """The lowest and highest standard objectives inside the magnification ``interval`` when they are
    a factor ``ratio`` or more apart (the estimate cannot tell them apart), else None."""
    lo, hi = interval
    inside = [o for o in objectives if lo <= o <= hi]
    if len(inside) >= 2 and max(inside) / min(inside) >= ratio - 1e-9:
        return min(inside), max(inside)
    return None
