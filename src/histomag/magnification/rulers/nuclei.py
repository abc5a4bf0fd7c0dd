"""A physical ruler: µm per pixel from the size of the nuclei in an H&E image.

Nuclei are the one structure of known physical size that almost every H&E field contains, so
their typical diameter in pixels, divided into a prior diameter in µm, gives the resolution with
no model and no training. The measurement knows nothing about the scale in advance (nuclei may
be 2 px or 40 px across) and uses no pixel-sized threshold:

1. **Haematoxylin** by colour deconvolution (Ruifrok & Johnston's H&E-DAB matrix, the one
   :func:`skimage.color.rgb2hed` uses): optical density per channel, split into a grey part
   (kept at full resolution) and a chroma part smoothed by one pixel, because JPEG and Bayer
   cameras store colour at half resolution and deconvolution turns that into pixel noise.
2. **Nuclear interiors filled**: vesicular nuclei (dark rim, pale centre) become solid discs by
   filling the holes of the haematoxylin image at a few grey levels (a parameter-free,
   scale-free operation).
3. **Scale space**: the scale-normalised Laplacian of Gaussian ``-σ²∇²(G_σ * H)`` on a pyramid
   (four scales per octave, σ from 0.5 px to 32 px, each octave on a 2x decimated grid); its
   maxima over space and scale are blobs, and a blob at scale σ has the diameter ``2√2 σ`` of
   the uniform disc whose response peaks at that scale.
4. **Nuclei among the blobs**: blobs at least half as strong as the reference response (the
   response above which the strongest blobs cover 5% of the image, a contrast in haematoxylin
   optical density, not a size), minus blobs that sit inside a larger, stronger one (chromatin
   inside a nucleus). The nuclear population is the peak of the area-weighted distribution of
   log sizes among scales that hold at least a few dozen blobs (sparse large structures and the
   swarm of tiny texture blobs both lose), and the blobs within a factor of 1.5 of that peak are
   the nuclei.

On ideal discs the size tracks the true diameter within about 1% from 4 to 40 px (+6% at 3 px,
+10% at 2 px, where the pixel grid blurs them); below about 2.5 px the estimate saturates near
2.2 px. See ``docs/nuclei-baseline.md`` for the measured behaviour on real tissue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from scipy.special import ive

from histomag.errors import ConfigError, NoTissueError
from histomag.magnification.rulers.base import RULERS, RulerReading, log_spread, weighted_median

#: Prior nuclear diameter in µm, in the units of :attr:`NucleiMeasurement.size_px` (LoG disc
#: diameters, not segmented areas). Calibrated as the median over six real sources (MoNuSeg,
#: CPM-15 40x and 20x, BACH, CMU-1, OS-1) of each source's median implied diameter; with the prior
#: taken from the other five, a source's median relative mpp error is 9-25%
#: (``benchmarks/nuclei_eval.py``; docs/nuclei-baseline.md).
NUCLEUS_SIZE_UM: float = 6.87

#: fewer nuclei than this and no size is given.
MIN_NUCLEI = 20
#: the ruler's floor: nuclei measured at or below this many px may be smaller still (the pixel grid
#: blurs them: +6% at 3 px, +10% at 2 px, and below about 2.5 px every size reads as about 2.2 px),
#: so a field this coarse can be of any lower magnification.
FLOOR_PX = 3.0
#: the nuclear population is looked for among blobs at least this large (px) first: below it the
#: LoG sizes saturate and pixel texture, JPEG blocks, sharpening halos and noise pile up.
POPULATION_FLOOR_PX = 4.0
#: the reference blob response (haematoxylin optical density) below which an image has no nuclei.
MIN_CONTRAST = 0.01
#: larger images are measured on a known-factor downsample (or on a full-resolution window).
MAX_PIXELS = 1_500_000
#: below this size (px) on the downsample, nuclei are measured at full resolution instead.
MIN_RESOLVED_PX = 6.0

_SCALES_PER_OCTAVE = 4
_SIGMA_MIN = 0.5
_SIGMA_MAX = 32.0
_DISC_DIAMETER_PER_SIGMA = 2.0 * math.sqrt(2.0)
_REFERENCE_AREA = 0.05     # the strongest blobs covering this share of the image set the contrast
_RELATIVE_RESPONSE = 0.5   # a nucleus responds at least this share of the reference
_POPULATION = 30           # blobs within ±0.3 octave that make a population (the mode's gate)
_MODE_BANDWIDTH = 0.3      # octaves
_WINDOW = 1.5              # nuclei: blobs within this factor of the population's peak size
_NEAR_PARENT = 2.0         # a blob inside a larger one at most this many times its σ ...
_NEAR_PARENT_RESPONSE = 0.5  # ... is dropped when that one responds at least this share as strongly
_FILL_PERCENTILES = (60, 70, 80, 88, 94, 98)
_CHROMA_SIGMA = 1.0

# Ruifrok & Johnston H&E-DAB: haematoxylin weights of the three channel optical densities, in the
# units of skimage.color.rgb2hed (optical density / -log(1e-6)); kept here so that the module
# imports nothing heavy.
_HED_FROM_RGB_H = np.array([1.87798274, -0.06590806, -0.60190736], dtype=np.float32)
_OD_LUT = (np.log(np.maximum(np.arange(256), 1) / 255.0) / np.log(1e-6)).astype(np.float32)


@dataclass(frozen=True)
class NucleiMeasurement:
    """The typical nuclear size of an image, in its pixels.

    Attributes:
        n_nuclei: blobs taken as nuclei (those of the dominant population, see the module doc).
        size_px: typical nuclear diameter in pixels: the area-weighted median, over those
            nuclei, of ``2√2 σ``, where ``σ`` is the scale at which a nucleus's scale-normalised
            Laplacian-of-Gaussian response peaks; for a uniform disc this is its diameter.
        spread: interquartile range of the per-nucleus diameters divided by their median
            (0.3-0.5 is typical tissue; the window limits it to at most about 0.8).
        log_spread: the same spread as a robust log-sd (interquartile range of the log diameters / 1.349).
        objects: ``(n, 3)`` rows of ``y, x, diameter_px`` of the nuclei measured (image px).
        at_floor: the strongest size population lies below :data:`POPULATION_FLOOR_PX` and outweighs
            the one measured: the nuclei may be too small to resolve, and the size measured may be
            of clusters (see :func:`below_floor`).
        floor_size_px: then, the diameter of that sub-floor population (px).
    """

    n_nuclei: int
    size_px: float
    spread: float
    log_spread: float = 0.0
    at_floor: bool = False
    floor_size_px: float | None = None
    objects: np.ndarray | None = field(default=None, compare=False, repr=False)


def haematoxylin(rgb: np.ndarray, chroma_sigma: float = _CHROMA_SIGMA) -> np.ndarray:
    """Haematoxylin density per pixel (units of :func:`skimage.color.rgb2hed`, clipped at 0).

    With ``chroma_sigma=0`` this equals ``rgb2hed(np.maximum(rgb, 1))[..., 0]`` (a zero in one
    channel is read as 1/255, not as the 1e-6 that makes rgb2hed explode on JPEG pixels). With
    the default, the chroma part of the optical density (its deviation from the grey mean) is
    smoothed by a Gaussian of ``chroma_sigma`` px, the grey part is kept sharp.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        chroma_sigma: chroma smoothing in pixels (0: none).

    Returns:
        ``(H, W)`` float32 array.
    """
    od = _OD_LUT[rgb]
    weights = _HED_FROM_RGB_H
    grey = od.mean(axis=2) * weights.sum()
    chroma = od @ weights - grey
    if chroma_sigma > 0:
        chroma = ndi.gaussian_filter(chroma, chroma_sigma)
    return np.maximum(grey + chroma, 0.0).astype(np.float32)


def measure_nuclei(rgb: np.ndarray) -> NucleiMeasurement:
    """Measure the typical nuclear diameter of an H&E image, in its own pixels.

    Images over :data:`MAX_PIXELS` are measured on an area downsample by a known integer factor
    (the size is scaled back); when nuclei would be under :data:`MIN_RESOLVED_PX` there, a
    full-resolution window of about :data:`MAX_PIXELS` around the most nuclei is measured instead.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB image with square pixels (an alpha channel is ignored).

    Returns:
        The measurement; pass it to :func:`mpp_from_nuclei` for µm per pixel.

    Raises:
        ConfigError: not an ``(H, W, 3)`` uint8 image.
        NoTissueError: fewer than :data:`MIN_NUCLEI` nuclei, or no haematoxylin contrast.
    """
    rgb = as_rgb(rgb)
    h, w = rgb.shape[:2]
    if h * w <= MAX_PIXELS:
        return _measure(rgb)
    factor = math.ceil(math.sqrt(h * w / MAX_PIXELS))
    small = np.asarray(Image.fromarray(rgb).resize((w // factor, h // factor), Image.Resampling.BOX,
                                                   box=(0, 0, w // factor * factor, h // factor * factor)))
    coarse, centres = _measure(small, return_centres=True)
    if coarse.size_px >= MIN_RESOLVED_PX:
        objects = coarse.objects * factor if coarse.objects is not None else None
        return NucleiMeasurement(coarse.n_nuclei, coarse.size_px * factor, coarse.spread, coarse.log_spread,
                                 coarse.at_floor, coarse.floor_size_px and coarse.floor_size_px * factor, objects)
    # nuclei too small to survive the downsample: measure the full-resolution window with most of them
    side = int(math.sqrt(MAX_PIXELS))
    wh, ww = min(side, h), min(side, w)
    counts, ys, xs = _window_counts(centres * factor, h, w, wh, ww)
    y0, x0 = ys[counts.argmax()], xs[counts.argmax()]
    fine = _measure(np.ascontiguousarray(rgb[y0:y0 + wh, x0:x0 + ww]))
    objects = fine.objects + np.array([y0, x0, 0.0]) if fine.objects is not None else None
    return NucleiMeasurement(fine.n_nuclei, fine.size_px, fine.spread, fine.log_spread, fine.at_floor,
                             fine.floor_size_px, objects)


def mpp_from_nuclei(measurement: NucleiMeasurement, prior_um: float = NUCLEUS_SIZE_UM) -> float:
    """µm per pixel implied by a measurement and a prior nuclear diameter.

    Args:
        measurement: from :func:`measure_nuclei`.
        prior_um: typical nuclear diameter in µm, in the same units (default: the calibrated prior).

    Returns:
        ``prior_um / measurement.size_px``.
    """
    if not (math.isfinite(prior_um) and prior_um > 0):
        raise ConfigError(f"nuclear size prior {prior_um!r} µm is not a positive number; "
                          f"use e.g. {NUCLEUS_SIZE_UM}")
    if not (math.isfinite(measurement.size_px) and measurement.size_px > 0):
        raise ConfigError(f"nuclear size {measurement.size_px!r} px is not a positive number; "
                          "measure it with measure_nuclei")
    return prior_um / measurement.size_px


# ----- internals -------------------------------------------------------------------------------
def as_rgb(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ConfigError(f"expected an (H, W, 3) uint8 RGB image, got {arr.shape} {arr.dtype}; convert it first")
    return np.ascontiguousarray(arr[..., :3])


def candidate_blobs(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The blobs that may be nuclei: ``(σ, y, x, density)`` of those responding at least half as
    strongly as the reference and not inside a larger, stronger one (cached for the last image,
    so that several rulers measuring one field find its blobs once).

    Raises:
        NoTissueError: no haematoxylin blobs, or too little contrast.
    """
    key = (rgb.shape, rgb.__array_interface__["data"][0], hash(rgb[::7, ::11].tobytes()))
    if _CANDIDATES.get("key") == key:
        return _CANDIDATES["value"]
    h, w = rgb.shape[:2]
    sigma, response, ys, xs, density = _blobs(_fill_holes(haematoxylin(rgb, _CHROMA_SIGMA)))
    if sigma.size == 0:
        raise NoTissueError(f"no nuclei in a {w}x{h} image (no haematoxylin blobs); give an H&E field with "
                            f"at least {MIN_NUCLEI} nuclei")
    reference = _reference_response(sigma, response, h * w)
    if reference < MIN_CONTRAST:
        raise NoTissueError(f"no nuclei in a {w}x{h} image (haematoxylin contrast {reference:.3f} < "
                            f"{MIN_CONTRAST}); give an H&E field with at least {MIN_NUCLEI} nuclei")
    keep = _outermost(sigma, response, ys, xs, response >= _RELATIVE_RESPONSE * reference)
    value = (sigma[keep], ys[keep], xs[keep], density[keep])
    _CANDIDATES.update(key=key, value=value)
    return value


_CANDIDATES: dict = {}


def nuclear_peak(sigma: np.ndarray) -> float:
    """σ of the nuclear population: the highest local maximum of the area-weighted size density at or
    above :data:`POPULATION_FLOOR_PX` (below it pixel texture, JPEG blocks, sharpening halos and
    noise pile up); without one, the density's peak among blobs that large, or among all blobs
    when fewer than a population's worth are that large."""
    floor = POPULATION_FLOOR_PX / _DISC_DIAMETER_PER_SIGMA
    local = _local_peak_above(sigma, floor)
    if local is not None:
        return local
    above = sigma >= floor
    if above.sum() >= _POPULATION:
        return _population_peak(sigma[above])
    return _population_peak(sigma)


def below_floor(sigma: np.ndarray, peak: float) -> float | None:
    """Whether the size density's highest point lies below :data:`POPULATION_FLOOR_PX` and above the
    density at the population ``peak`` measured: then the field's nuclei may be at the pixel grid's
    floor (a snapshot at 4x, a 20x field shown at a quarter) and the population above it clusters,
    so the field gives no size (measured leaving datasets out: BACH at 4.5x read 2.1x too high).
    Returns the sub-floor population's diameter (px) when so, else None."""
    grid, f = _size_density(sigma)
    top = int(np.argmax(f))
    at_peak = f[int(np.argmin(np.abs(grid - math.log2(peak))))]
    diameter = float(2.0 ** grid[top] * _DISC_DIAMETER_PER_SIGMA)
    return diameter if diameter < POPULATION_FLOOR_PX and f[top] > at_peak else None


def _measure(rgb: np.ndarray,
             return_centres: bool = False) -> NucleiMeasurement | tuple[NucleiMeasurement, np.ndarray]:
    h, w = rgb.shape[:2]
    sigma, ys, xs, _ = candidate_blobs(rgb)
    peak = nuclear_peak(sigma)
    floor_size = below_floor(sigma, peak)
    nuclei = (sigma >= peak / _WINDOW) & (sigma <= peak * _WINDOW)
    if nuclei.sum() < MIN_NUCLEI:
        raise NoTissueError(f"only {int(nuclei.sum())} nuclei in a {w}x{h} image; at least {MIN_NUCLEI} are "
                            "needed: give a larger field or one with more cells")
    diameters = _DISC_DIAMETER_PER_SIGMA * sigma[nuclei]
    q1, med, q3 = np.percentile(diameters, [25, 50, 75])
    objects = np.stack([ys[nuclei], xs[nuclei], diameters], axis=1)
    result = NucleiMeasurement(n_nuclei=int(nuclei.sum()), size_px=weighted_median(diameters, diameters ** 2),
                               spread=float((q3 - q1) / med), log_spread=log_spread(diameters),
                               at_floor=floor_size is not None, floor_size_px=floor_size, objects=objects)
    if return_centres:
        return result, objects[:, :2]
    return result


def _fill_holes(hd: np.ndarray) -> np.ndarray:
    """Raise every enclosed dip of ``hd`` to the level that encloses it, at a few grey levels."""
    out = hd.copy()
    if not _FILL_PERCENTILES:
        return out
    levels = np.percentile(hd[::2, ::2], _FILL_PERCENTILES)
    for level in np.unique(levels):
        background = hd <= level
        labels, n = ndi.label(background)
        if n == 0:
            continue
        touches_border = np.zeros(n + 1, dtype=bool)
        for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
            touches_border[edge] = True
        hole = background & ~touches_border[labels]
        out[hole] = np.maximum(out[hole], np.float32(level))
    return out


def _gaussian_kernel(t: float) -> np.ndarray:
    """Lindeberg's discrete Gaussian of variance ``t`` (exact semigroup on the pixel grid)."""
    radius = int(math.ceil(4.0 * math.sqrt(t))) + 1
    k = ive(np.arange(-radius, radius + 1), t)
    return (k / k.sum()).astype(np.float32)


def _blur(img: np.ndarray, t: float) -> np.ndarray:
    if t <= 0:
        return img
    k = _gaussian_kernel(t)
    return ndi.correlate1d(ndi.correlate1d(img, k, axis=0, mode="reflect"), k, axis=1, mode="reflect")


def _laplacian(img: np.ndarray) -> np.ndarray:
    """Five-point Laplacian with replicated edges."""
    out = img * np.float32(-4.0)
    out[1:] += img[:-1]
    out[:-1] += img[1:]
    out[0] += img[0]
    out[-1] += img[-1]
    out[:, 1:] += img[:, :-1]
    out[:, :-1] += img[:, 1:]
    out[:, 0] += img[:, 0]
    out[:, -1] += img[:, -1]
    return out


def _max3x3(a: np.ndarray) -> np.ndarray:
    m = a.copy()
    np.maximum(m[:, 1:], a[:, :-1], out=m[:, 1:])
    np.maximum(m[:, :-1], a[:, 1:], out=m[:, :-1])
    n = m.copy()
    np.maximum(n[1:], m[:-1], out=n[1:])
    np.maximum(n[:-1], m[1:], out=n[:-1])
    return n


def _blobs(hd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Maxima of ``-σ²∇²(G_σ * hd)`` over space and scale: (σ, response, y, x, density at the centre
    at that scale), σ and y/x in input px.

    Octave 0 runs at full resolution from σ = 0.5 to 2 px; every further octave decimates the
    image blurred to σ = 2 (local px) by 2 and covers σ = 1..2 local px again, as in SIFT.
    """
    step = 2.0 ** (1.0 / _SCALES_PER_OCTAVE)
    n0 = int(round(math.log(2.0 / _SIGMA_MIN, step)))
    sigmas = [2.0 / step ** (n0 + 1 - k) for k in range(n0 + 3)]   # one extra below and above
    image, factor, t_now = hd, 1, 0.0
    found: list[np.ndarray] = []
    while True:
        smoothed, resp, peaks = [], [], []
        level = image
        for s in sigmas:
            level = _blur(level, s * s - t_now)
            t_now = s * s
            smoothed.append(level)
            r = _laplacian(level)
            r *= np.float32(-t_now)
            resp.append(r)
            peaks.append(_max3x3(r))
        for k in range(1, len(sigmas) - 1):
            r = resp[k]
            is_max = (r >= peaks[k]) & (r > 1e-3) & (r >= peaks[k - 1]) & (r >= peaks[k + 1])
            y, x = np.nonzero(is_max)
            r0, r1, r2 = resp[k - 1][y, x], r[y, x], resp[k + 1][y, x]
            curvature = r0 - 2.0 * r1 + r2
            offset = np.where(curvature < 0, 0.5 * (r0 - r2) / np.where(curvature < 0, curvature, -1.0), 0.0)
            log_sigma = math.log2(sigmas[k]) + np.clip(offset, -0.5, 0.5) / _SCALES_PER_OCTAVE
            found.append(np.stack([factor * 2.0 ** log_sigma, r1, factor * y + (factor - 1) / 2.0,
                                   factor * x + (factor - 1) / 2.0, smoothed[k][y, x]], axis=1))
        nxt = smoothed[int(np.argmin([abs(s - 2.0) for s in sigmas]))][::2, ::2]
        factor *= 2
        if 2.0 * factor > _SIGMA_MAX * 1.01 or min(nxt.shape) < 16:
            break
        image, t_now = np.ascontiguousarray(nxt), 1.0
        sigmas = [step ** k for k in range(_SCALES_PER_OCTAVE + 2)]
    blobs = np.concatenate(found) if found else np.zeros((0, 5))
    return blobs[:, 0], blobs[:, 1], blobs[:, 2], blobs[:, 3], blobs[:, 4]


def _reference_response(sigma: np.ndarray, response: np.ndarray, area: float) -> float:
    """The response above which the strongest blobs (discs of radius √2 σ) cover 5% of the image."""
    order = np.argsort(-response)
    covered = np.cumsum(2.0 * np.pi * sigma[order] ** 2)
    return float(response[order[min(int(np.searchsorted(covered, _REFERENCE_AREA * area)), len(order) - 1)]])


def _outermost(sigma: np.ndarray, response: np.ndarray, ys: np.ndarray, xs: np.ndarray,
               candidate: np.ndarray) -> np.ndarray:
    """Candidates that do not sit inside a larger candidate (their centre within its radius) that is
    stronger, or, when at most twice as large, at least half as strong."""
    from scipy.spatial import cKDTree

    idx = np.flatnonzero(candidate)
    keep = np.zeros(sigma.size, dtype=bool)
    keep[idx] = True
    if idx.size < 2:
        return keep
    radius = math.sqrt(2.0) * sigma[idx]
    pairs = cKDTree(np.stack([ys[idx], xs[idx]], axis=1)).query_pairs(float(radius.max()), output_type="ndarray")
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        big, small = np.where(sigma[idx[i]] >= sigma[idx[j]], i, j), np.where(sigma[idx[i]] >= sigma[idx[j]], j, i)
        dist = np.hypot(ys[idx[big]] - ys[idx[small]], xs[idx[big]] - xs[idx[small]])
        # a near parent (at most _NEAR_PARENT times larger) needs only half the child's response: sharpened
        # chromatin and fragments of a nucleus respond strongly at their small scales
        near = sigma[idx[big]] <= _NEAR_PARENT * sigma[idx[small]]
        k = np.where(near, _NEAR_PARENT_RESPONSE, 1.0)
        inside = (dist < radius[big]) & (response[idx[big]] >= k * response[idx[small]])
        keep[idx[small[inside]]] = False
    return keep


def _size_density(sigma: np.ndarray, step: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """``(log2 σ grid, density)``: the area-weighted log-size density, counting only scales with a population."""
    log_s = np.log2(sigma)
    grid = np.arange(log_s.min() - 2 * _MODE_BANDWIDTH, log_s.max() + 2 * _MODE_BANDWIDTH + step, step)
    edges = np.r_[grid - step / 2, grid[-1] + step / 2]
    area, _ = np.histogram(log_s, bins=edges, weights=sigma ** 2)
    count, _ = np.histogram(log_s, bins=edges)
    bw = _MODE_BANDWIDTH / step
    density = ndi.gaussian_filter1d(area.astype(np.float64), bw, mode="constant")
    population = ndi.gaussian_filter1d(count.astype(np.float64), bw, mode="constant") * math.sqrt(2 * math.pi) * bw
    return grid, density * np.minimum(1.0, population / _POPULATION)


def _population_peak(sigma: np.ndarray) -> float:
    """σ at the peak of the area-weighted log-size density, counting only scales with a population."""
    grid, density = _size_density(sigma)
    return float(2.0 ** grid[int(np.argmax(density))])


def _local_peak_above(sigma: np.ndarray, floor_sigma: float) -> float | None:
    """σ of the highest local maximum of the size density (of all blobs) at or above ``floor_sigma``,
    or None: a population below the floor (pixel texture, JPEG blocks) whose tail crosses it is no
    peak there."""
    grid, f = _size_density(sigma)
    interior = (f[1:-1] > f[:-2]) & (f[1:-1] >= f[2:]) & (grid[1:-1] >= math.log2(floor_sigma))
    ii = np.flatnonzero(interior) + 1
    return float(2.0 ** grid[ii[np.argmax(f[ii])]]) if ii.size else None


def _window_counts(centres: np.ndarray, h: int, w: int, wh: int,
                   ww: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Number of ``centres`` (y, x) in each window of a half-overlapping grid of ``wh`` x ``ww`` windows."""
    ys = np.unique(np.r_[np.arange(0, max(h - wh, 0) + 1, max(wh // 2, 1)), max(h - wh, 0)])
    xs = np.unique(np.r_[np.arange(0, max(w - ww, 0) + 1, max(ww // 2, 1)), max(w - ww, 0)])
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    gy, gx = gy.ravel(), gx.ravel()
    cy, cx = centres[:, 0][None, :], centres[:, 1][None, :]
    counts = ((cy >= gy[:, None]) & (cy < gy[:, None] + wh) & (cx >= gx[:, None]) & (cx < gx[:, None] + ww)).sum(1)
    return counts, gy, gx


@RULERS.register("nuclei")
def read_nuclei(rgb: np.ndarray) -> RulerReading:
    """The nuclei ruler's reading of one field (``size_px`` None, with the reason, when it offers none)."""
    try:
        m = measure_nuclei(rgb)
    except NoTissueError as exc:
        return RulerReading("nuclei", None, 0, 0.0, reason=str(exc))
    objects = m.objects if m.objects is not None else np.zeros((0, 3))
    if m.at_floor:
        return RulerReading("nuclei", None, m.n_nuclei, m.log_spread, objects,
                            f"nuclei at the ruler's {POPULATION_FLOOR_PX:g} px floor", at_floor=True)
    return RulerReading("nuclei", m.size_px, m.n_nuclei, m.log_spread, objects)
