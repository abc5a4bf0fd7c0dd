"""Slide-wide structure as functions of position in µm: tissue outline, class regions, fat lobules,
tumour nests, collagen fibre phase, lymphoid follicles.

Everything here is a deterministic function of (x, y, seed), evaluated on whatever points the
renderer asks for (the coarse grid, object centres, label-mask cells).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from histomag.errors import ConfigError
from histomag.synth.noise import seed_position, fbm, smoothstep, sub_seed, value_noise, worley, worley_seeds

#: the morphologies a class can have, in the default class-id order.
MORPHOLOGIES = ("normal", "tumor", "lymphoid")
_ALIASES = {"tumour": "tumor", "cancer": "tumor", "lymph": "lymphoid", "lymphocytes": "lymphoid"}
NORMAL, TUMOR, LYMPHOID = 0, 1, 2

#: structure codes of the coarse map (what a point of tissue is made of).
GLASS, STROMA, EPITHELIUM, LUMEN, NEST, LYMPH, FAT, VESSEL, WALL, NECROSIS, SINUS = range(11)

#: class scores vary on this scale (µm): regions several hundred µm across, larger on larger
#: slides (a fifth of the shorter side, up to 1.2 mm) so big slides keep structure at 1x.
CLASS_CELL_UM = (420.0, 0.2, 1200.0)
#: tumour nests and the stroma between them.
NEST_CELL_UM = 120.0
NEST_THRESHOLD = -0.3       # nf > this: tumour epithelium (~80 % of a tumour region)
NEST_LUMEN_THRESHOLD = 0.36  # nf > this: a glandular lumen in the middle of a large nest
#: fat: lobules of adipocytes.
FAT_LOBULE_UM = 170.0
FAT_THRESHOLD = 0.5  # same for every class (~7 % of the tissue)
ADIPOCYTE_UM = 68.0


def normalize_classes(classes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Canonical class names (``tumour`` -> ``tumor``); 1 to 3 distinct known morphologies."""
    names = tuple(_ALIASES.get(str(c).strip().lower(), str(c).strip().lower()) for c in classes)
    if not 1 <= len(names) <= len(MORPHOLOGIES):
        raise ConfigError(f"classes {tuple(classes)!r}: give 1 to 3 of {', '.join(MORPHOLOGIES)}")
    unknown = [c for c in names if c not in MORPHOLOGIES]
    if unknown:
        raise ConfigError(f"unknown synthetic class {unknown[0]!r}: use {', '.join(MORPHOLOGIES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"repeated class in {tuple(classes)!r}: name each once")
    return names


@dataclass(frozen=True)
class SlideStyle:
    """Per-slide variation that does not depend on the class (stain, intensity, scale jitter)."""

    h_vec: tuple[float, float, float]
    e_vec: tuple[float, float, float]
    h_scale: float
    e_scale: float
    glass_od: float  # neutral absorbance of glass and mounting medium (grey, all channels)
    nuclear_scale: float
    gland_gap_um: float
    fibre_spacing_um: float
    fibre_waviness: float
    fibre_angle: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "SlideStyle":
        def unit(v: np.ndarray) -> tuple[float, float, float]:
            v = np.clip(v, 0.02, None)
            return tuple(float(t) for t in v / np.linalg.norm(v))

        h = np.array([0.63, 0.74, 0.26]) + rng.normal(0, 0.02, 3)
        e = np.array([0.10, 0.86, 0.46]) + rng.normal(0, 0.02, 3)
        return cls(h_vec=unit(h), e_vec=unit(e), h_scale=float(rng.uniform(0.88, 1.12)),
                   e_scale=float(rng.uniform(0.88, 1.12)), glass_od=float(rng.uniform(0.025, 0.06)),
                   nuclear_scale=float(rng.uniform(0.97, 1.03)),
                   gland_gap_um=float(rng.uniform(8, 18)), fibre_spacing_um=float(rng.uniform(4.5, 6.0)),
                   fibre_waviness=float(rng.uniform(3.0, 5.0)), fibre_angle=float(rng.uniform(0, math.pi)))


class Layout:
    """Where tissue, each class, fat, nests and fibres are, for one slide."""

    def __init__(self, width: int, height: int, mpp: float, seed: int, classes: tuple[str, ...]) -> None:
        self.width, self.height, self.mpp, self.seed = width, height, mpp, int(seed)
        self.classes = classes
        self.morph = np.array([MORPHOLOGIES.index(c) for c in classes], dtype=np.int64)
        self.w_um, self.h_um = width * mpp, height * mpp
        rng = np.random.default_rng(sub_seed(seed, "layout"))
        self.style = SlideStyle.draw(rng)
        # tissue outline: an ellipse filling most of the slide, with wavy and ragged edges
        self.cx = self.w_um * (0.5 + rng.uniform(-0.03, 0.03))
        self.cy = self.h_um * (0.5 + rng.uniform(-0.03, 0.03))
        self.ax = self.w_um * rng.uniform(0.43, 0.47)
        self.ay = self.h_um * rng.uniform(0.43, 0.47)
        lo, frac, hi = CLASS_CELL_UM
        self.class_cell_um = float(np.clip(frac * min(self.w_um, self.h_um), lo, hi))
        self.class_targets = np.full(len(classes), 1.0 / len(classes))
        if len(classes) > 1:
            t = self.class_targets * rng.uniform(0.85, 1.15, len(classes))
            self.class_targets = t / t.sum()
        self.bias = np.zeros(len(classes), dtype=np.float32)
        self._s = {k: sub_seed(seed, k) for k in ("outline", "outline2", "outline3", "nest", "nest_lumen",
                                                 "necrosis", "fat", "fatcell", "tcell",
                                                 "loose", "trabecula", "follicle", "stain")}
        self._class_seeds = [sub_seed(seed, "class", k) for k in range(len(classes))]
        self._balance_classes()

    # ----- tissue and classes -----------------------------------------------------------------
    def tissue_um(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance-like value in µm: positive inside the tissue."""
        nx = (x - np.float32(self.cx)) / np.float32(self.ax)
        ny = (y - np.float32(self.cy)) / np.float32(self.ay)
        r = np.sqrt(nx * nx + ny * ny)
        scale = np.float32(0.5 * (self.ax + self.ay))
        big = fbm(x, y, 0.5 * min(self.w_um, self.h_um), self._s["outline"], octaves=2)
        out = (np.float32(1.0) - r + np.float32(0.2) * big) * scale
        out += np.float32(35.0) * fbm(x, y, 90.0, self._s["outline2"], octaves=2)
        out += np.float32(4.0) * value_noise(x, y, 12.0, self._s["outline3"])
        return out

    def class_scores(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(K, ...) scores; the class of a point is the argmax."""
        return np.stack([fbm(x, y, self.class_cell_um, s, octaves=3, gain=0.45) + self.bias[k]
                         for k, s in enumerate(self._class_seeds)])

    def class_index(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Index into ``classes`` (0..K-1) of each point."""
        if len(self.classes) == 1:
            return np.zeros(np.shape(x), dtype=np.int64)
        return np.argmax(self.class_scores(x, y), axis=0)

    def morphology(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Morphology (NORMAL/TUMOR/LYMPHOID) of each point."""
        return self.morph[self.class_index(x, y)]

    def _balance_classes(self) -> None:
        """Shift the class biases so each class covers about its target share of the tissue."""
        if len(self.classes) == 1:
            return
        step = max(self.w_um, self.h_um) / 160.0
        xs = np.arange(step / 2, self.w_um, step, dtype=np.float32)
        ys = np.arange(step / 2, self.h_um, step, dtype=np.float32)
        X, Y = np.meshgrid(xs, ys)
        inside = self.tissue_um(X, Y) > 0
        X, Y = X[inside], Y[inside]
        if X.size < 10:
            return
        base = self.class_scores(X, Y)  # bias is zero here
        bias = np.zeros(len(self.classes), dtype=np.float32)
        best, best_err = bias.copy(), np.inf
        rate = 0.6
        for _ in range(300):
            share = np.bincount(np.argmax(base + bias[:, None], axis=0), minlength=len(self.classes)) / X.size
            err = self.class_targets - share
            worst = float(np.abs(err).max())
            if worst < best_err:
                best, best_err = bias.copy(), worst
            if worst < 0.01:
                break
            bias += np.float32(rate) * err.astype(np.float32)
            rate *= 0.985  # a shrinking step settles instead of jumping between two layouts
        self.bias = best

    def labels(self, downsample: int) -> np.ndarray:
        """Class ids (1..K, 0 = background) at the centre of each ``downsample`` px cell."""
        ny, nx = math.ceil(self.height / downsample), math.ceil(self.width / downsample)
        xs = ((np.arange(nx) * downsample + downsample / 2) * self.mpp).astype(np.float32)
        ys = ((np.arange(ny) * downsample + downsample / 2) * self.mpp).astype(np.float32)
        out = np.zeros((ny, nx), dtype=np.uint8)
        for r0 in range(0, ny, 256):
            X, Y = np.meshgrid(xs, ys[r0:r0 + 256])
            ids = (self.class_index(X, Y) + 1).astype(np.uint8)
            out[r0:r0 + 256] = np.where(self.tissue_um(X, Y) > 0, ids, 0)
        return out

    # ----- structure inside the tissue -----------------------------------------------------------
    def fat_lobule(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Smooth field whose value at an adipocyte's centre decides whether the cell is fat."""
        return fbm(x, y, FAT_LOBULE_UM, self._s["fat"], octaves=2)

    def fat_candidates(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Points that may lie in a fat cell: those whose lattice cell has a fat adipocyte centre in
        it or in one of its 8 neighbours (the nearest centre always lies in that 3x3 block)."""
        gx = np.floor(np.asarray(x, dtype=np.float32) / np.float32(ADIPOCYTE_UM)).astype(np.int64)
        gy = np.floor(np.asarray(y, dtype=np.float32) / np.float32(ADIPOCYTE_UM)).astype(np.int64)
        x0, y0 = int(gx.min()) - 1, int(gy.min()) - 1
        iy, ix = np.mgrid[y0:int(gy.max()) + 2, x0:int(gx.max()) + 2]
        sx, sy = seed_position(ix, iy, ADIPOCYTE_UM, self._s["fatcell"], 0.8)
        fat = self.fat_lobule(sx, sy) > FAT_THRESHOLD
        near = fat.copy()
        near[1:] |= fat[:-1]
        near[:-1] |= fat[1:]
        near2 = near.copy()
        near2[:, 1:] |= near[:, :-1]
        near2[:, :-1] |= near[:, 1:]
        return near2[gy - y0, gx - x0]

    def fat(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(is_fat_cell, membrane_distance_um): whole adipocytes (Voronoi cells ~50-100 µm) whose
        centre lies in a fat lobule."""
        d1, d2, sx, sy = worley(x, y, ADIPOCYTE_UM, self._s["fatcell"], jitter=0.8)
        return self.fat_lobule(sx, sy) > FAT_THRESHOLD, (d2 - d1) * np.float32(0.5)

    @property
    def tumour_cell_um(self) -> float:
        """Spacing of tumour cells (one nucleus per Voronoi cell)."""
        return 16.5 * self.style.nuclear_scale

    def tumour_cell_seeds(self) -> tuple[np.ndarray, np.ndarray]:
        """Centres of all tumour-cell Voronoi cells on the slide (µm)."""
        return worley_seeds(self.w_um, self.h_um, self.tumour_cell_um, self._s["tcell"], jitter=0.8)

    def tumour_membranes(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Half the gap between nearest and second-nearest tumour-cell centre (µm): 0 on a cell border."""
        d1, d2, _, _ = worley(x, y, self.tumour_cell_um, self._s["tcell"], jitter=0.8)
        return (d2 - d1) * np.float32(0.5)

    def nest(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Tumour nest field: > NEST_THRESHOLD is epithelium, > NEST_LUMEN_THRESHOLD a lumen."""
        return fbm(x, y, NEST_CELL_UM, self._s["nest"], octaves=3, gain=0.5)

    def necrosis_field(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Tumour lumens where this smooth field is > 0.1 hold necrotic debris."""
        return value_noise(x, y, 160.0, self._s["necrosis"])

    def fibre_lowres(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The smooth parts of the fibre pattern, (6, ...): per fibre family, the phase
        perturbation (cycles) and the bundle score. Smooth enough to evaluate on a sparse grid."""
        f32 = np.float32
        out = []
        for j in range(3):
            warp = fbm(x, y, 55.0, sub_seed(self.seed, "fibre-warp", j), octaves=2)
            wiggle = value_noise(x, y, 13.0, sub_seed(self.seed, "fibre-wiggle", j))
            out.append(f32(self.style.fibre_waviness) * warp + f32(0.45) * wiggle)
        for j in range(3):
            out.append(value_noise(x, y, 110.0, sub_seed(self.seed, "fibre-bundle", j)))
        return np.stack(out)

    def _fibre_channels(self, x: np.ndarray, y: np.ndarray, low: np.ndarray
                        ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """Three families of wavy parallel fibres: across-fibre phase (cycles), along-fibre
        coordinate (µm), and blend weights (bundles of one family with sharp-ish borders)."""
        f32 = np.float32
        k = f32(1.0 / self.style.fibre_spacing_um)
        phases, alongs = [], []
        for j in range(3):
            th = self.style.fibre_angle + j * math.pi / 3
            c, s = f32(math.cos(th)), f32(math.sin(th))
            phases.append(k * (x * c + y * s) + low[j])
            alongs.append(y * c - x * s)
        sc = low[3:6] * f32(9.0)
        sc = sc - sc.max(axis=0, keepdims=True)
        w = np.exp(sc)
        w /= w.sum(axis=0, keepdims=True)
        return phases, alongs, w

    def fibres(self, x: np.ndarray, y: np.ndarray, low: np.ndarray | None = None) -> np.ndarray:
        """0..1 collagen density: irregular fibres (streaks ~20 µm long, one fibre spacing wide)
        that follow wavy parallel paths, in bundles of different orientation.

        ``low`` is :meth:`fibre_lowres` at the same points (maybe interpolated from a sparse grid).
        """
        if low is None:
            low = self.fibre_lowres(x, y)
        phases, alongs, w = self._fibre_channels(x, y, low)
        out = np.zeros(np.shape(x), dtype=np.float32)
        for j, (ph, al) in enumerate(zip(phases, alongs)):
            s1 = value_noise(al * np.float32(1 / 22.0), ph, 1.0, sub_seed(self.seed, "streak1", j), rotate=False)
            s2 = value_noise(al * np.float32(1 / 8.0), ph * np.float32(2.1), 1.0, sub_seed(self.seed, "streak2", j),
                             rotate=False)
            out += w[j] * (np.float32(0.5) + np.float32(0.8) * (np.float32(0.7) * s1 + np.float32(0.3) * s2))
        return np.clip(out, 0.0, 1.0)

    def fibre_angle(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Direction (radians) of the dominant fibres at points."""
        h = np.float32(0.5)

        def phases(px: np.ndarray, py: np.ndarray) -> list[np.ndarray]:
            return self._fibre_channels(px, py, self.fibre_lowres(px, py))[0]

        gx = [a - b for a, b in zip(phases(x + h, y), phases(x - h, y))]
        gy = [a - b for a, b in zip(phases(x, y + h), phases(x, y - h))]
        j = np.argmax(self.fibre_lowres(x, y)[3:6], axis=0)
        return np.arctan2(np.choose(j, gy), np.choose(j, gx)) + np.float32(math.pi / 2)

    def loose(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """0..1: how loose (cleft-rich, pale) the stroma is."""
        return smoothstep(-0.35, 0.45, fbm(x, y, 140.0, self._s["loose"], octaves=2))

    def trabecula_field(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Fibrous bands (~15 µm wide) cross lymphoid tissue where |this field| < ~0.04."""
        return value_noise(x, y, 230.0, self._s["trabecula"])

    def sinus_field(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Pale sinus-like zones of lymphoid tissue where this is > 0.15 (~1/3 of it)."""
        return fbm(x, y, 75.0, sub_seed(self.seed, "sinus"), octaves=2)

    def follicle(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Lymphocyte density modulation in [-1, 1] (follicles vs looser zones)."""
        return fbm(x, y, 260.0, self._s["follicle"], octaves=2)

    def stain_variation(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Slow, class-independent staining/thickness variation (multiplier around 1)."""
        return np.float32(1.0) + np.float32(0.07) * fbm(x, y, 600.0, self._s["stain"], octaves=2)
