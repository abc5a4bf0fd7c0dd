"""A second ruler from small lymphocytes: round, very dense nuclei of nearly one size (about 6-7 µm
in the units the nuclei ruler measures them in, as calibrated).

Among the nuclear candidates of a field (:func:`~histomag.magnification.rulers.nuclei.candidate_blobs`),
those at most nucleus-sized and in the densest quarter of haematoxylin are lymphocyte candidates;
their size mode (log-size kernel density) gives the size when at least :data:`MIN_LYMPHOCYTES`
of them lie within a factor :data:`WINDOW` of it and agree (log-sd at most :data:`MAX_SPREAD`).
A field without such a population offers nothing (``size_px`` None, with the reason).
"""

from __future__ import annotations


import numpy as np

from histomag.errors import NoTissueError
from histomag.magnification.rulers.base import RULERS, RulerReading, log_spread
from histomag.magnification.rulers.nuclei import _DISC_DIAMETER_PER_SIGMA, _WINDOW, MIN_NUCLEI, as_rgb, \
    candidate_blobs, nuclear_peak

#: fewer lymphocyte candidates in one size mode than this and no size is given
MIN_LYMPHOCYTES = 15
#: candidates: the densest share (percentile) of the nucleus-sized blobs
DENSE_PERCENTILE = 75.0
#: the size window around the mode (factor) and the largest log-sd of sizes accepted
WINDOW = 1.3
MAX_SPREAD = 0.25
_BANDWIDTH = 0.15  # octaves


def _none(reason: str, n: int = 0) -> RulerReading:
    return RulerReading("lymphocytes", None, n, 0.0, reason=reason)


@RULERS.register("lymphocytes")
def read_lymphocytes(rgb: np.ndarray) -> RulerReading:
    """The lymphocyte ruler's reading of one field."""
    rgb = as_rgb(rgb)
    try:
        sigma, ys, xs, density = candidate_blobs(rgb)
    except NoTissueError as exc:
        return _none(str(exc))
    if sigma.size < MIN_NUCLEI:
        return _none("no nuclei")
    peak = nuclear_peak(sigma)
    nuc = (sigma >= peak / 2.0) & (sigma <= peak * _WINDOW)
    if nuc.sum() < MIN_LYMPHOCYTES:
        return _none("too few nuclei")
    dense = nuc & (density >= np.percentile(density[nuc], DENSE_PERCENTILE))
    s = sigma[dense]
    if s.size < MIN_LYMPHOCYTES:
        return _none("too few dense round nuclei", int(s.size))
    ls = np.log2(s)
    grid = np.arange(ls.min() - 0.5, ls.max() + 0.5, 0.02)
    mode = 2.0 ** grid[int(np.argmax(np.exp(-0.5 * ((grid[:, None] - ls[None, :]) / _BANDWIDTH) ** 2).sum(1)))]
    sel = (s >= mode / WINDOW) & (s <= mode * WINDOW)
    d = _DISC_DIAMETER_PER_SIGMA * s[sel]
    if sel.sum() < MIN_LYMPHOCYTES:
        return _none("too few dense nuclei of one size", int(sel.sum()))
    spread = log_spread(d)
    objects = np.stack([ys[dense][sel], xs[dense][sel], d], axis=1)
    if spread > MAX_SPREAD:
        return RulerReading("lymphocytes", None, int(sel.sum()), spread, objects,
                            f"dense nuclei sizes too scattered (log-sd {spread:.2f} > {MAX_SPREAD})")
    return RulerReading("lymphocytes", float(np.median(d)), int(sel.sum()), spread, objects)
