"""A synthetic slide as a scene: coarse tissue maps + cells, rendered to RGB region by region.

Rendering has two resolutions. Structure (tissue outline, stroma fibres, glands, lumens, nests,
fat, vessels) is composed as haematoxylin/eosin optical densities on a coarse grid of ~1 µm and
upsampled bilinearly; cells are drawn as sprites at full resolution on top, with a fine chromatin
texture. Colour follows Beer-Lambert: ``I = 255 * exp(-(OD_H * h + OD_E * e))`` plus mild noise.

Classes share one stain: after a first pass over the slide, each class gets a gain on its H and E
optical densities so that every class has the same mean RGB over its tissue (see
:meth:`Scene.class_histogram` and :meth:`Scene.solve_gains`), which leaves morphology and scale as the
only difference between classes.
"""

from __future__ import annotations

import math

import numpy as np

from histomag.synth import cells
from histomag.synth.layout import (EPITHELIUM, FAT, GLASS, LUMEN, LYMPH, LYMPHOID, NECROSIS, NEST,
                                   NEST_LUMEN_THRESHOLD, NEST_THRESHOLD, SINUS, STROMA, TUMOR, VESSEL, WALL, Layout)
from histomag.synth.noise import smoothstep, sub_seed, value_noise
from histomag.synth.objects import draw_sprites, stamp_sd

#: coarse grid spacing (µm); rounded to a whole number of pixels.
COARSE_UM = 1.0
#: pixel noise: standard deviation in 8-bit levels (a fixed random tile locked to slide position).
PIXEL_NOISE = 2.0
#: optical blur (Gaussian sigma in µm) of the rendered optical densities.
BLUR_UM = 0.2
#: histogram of (H, E) optical densities used to equalise class colours: bins per unit OD, bins.
HIST_PER_OD, HIST_BINS = 32, 128
_NOISE_TILE = 509
_TEX_TILE = 512
_STRIP = 128


class Scene:
    """Everything needed to render any region of one synthetic slide, deterministically.

    Args:
        width, height: slide size in pixels at ``mpp``.
        mpp: µm per pixel of the rendering.
        seed: the slide's seed.
        classes: canonical class names (see :func:`histomag.synth.layout.normalize_classes`).
    """

    def __init__(self, width: int, height: int, mpp: float, seed: int, classes: tuple[str, ...]) -> None:
        self.width, self.height, self.mpp, self.seed = int(width), int(height), float(mpp), int(seed)
        self.layout = Layout(self.width, self.height, self.mpp, self.seed, classes)
        style = self.layout.style
        self.h_vec = np.array(style.h_vec, dtype=np.float32) * np.float32(style.h_scale)
        self.e_vec = np.array(style.e_vec, dtype=np.float32) * np.float32(style.e_scale)
        self.step = max(1, int(round(COARSE_UM / self.mpp)))  # coarse step in pixels
        self.nxc = (self.width - 1) // self.step + 2
        self.nyc = (self.height - 1) // self.step + 2
        rng = np.random.default_rng(sub_seed(seed, "objects"))
        self.glands = cells.make_glands(self.layout, rng)
        self.holes = cells.make_holes(self.layout, rng)
        self.vessels = cells.make_vessels(self.layout, self.glands, rng)
        self._build_coarse()
        self.sprites = cells.make_cells(self.layout, self.code_at, self.morph_at, self.glands, self.vessels, rng)
        self._index_sprites()
        noise_rng = np.random.default_rng(sub_seed(seed, "pixel-noise"))
        self._noise = (noise_rng.standard_normal((_NOISE_TILE, _NOISE_TILE, 3)) * PIXEL_NOISE).astype(np.float32)
        self._chromatin = chromatin_tile(self.mpp, sub_seed(seed, "chromatin"))
        self.neutral_od = np.float32(style.glass_od)
        self.gains = np.ones((len(classes), 2), dtype=np.float32)
        self.gain_map: np.ndarray | None = None

    # ----- coarse maps ----------------------------------------------------------------------
    def coarse_um(self, k: np.ndarray) -> np.ndarray:
        """µm position of coarse grid index ``k`` (it sits on the centre of pixel ``k * step``)."""
        return ((np.asarray(k) * self.step + 0.5) * self.mpp).astype(np.float32)

    def _coarse_index(self, v_um: np.ndarray, n: int) -> np.ndarray:
        k = np.rint((np.asarray(v_um) / self.mpp - 0.5) / self.step).astype(np.int64)
        return np.clip(k, 0, n - 1)

    def code_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Structure code (GLASS, STROMA, ...) at points (µm), from the nearest coarse point."""
        return self.code[self._coarse_index(y, self.nyc), self._coarse_index(x, self.nxc)]

    def morph_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Morphology (NORMAL/TUMOR/LYMPHOID) at points (µm)."""
        return self.layout.morph[self.cls[self._coarse_index(y, self.nyc), self._coarse_index(x, self.nxc)]]

    def _build_coarse(self) -> None:
        self.od_bg = np.empty((2, self.nyc, self.nxc), dtype=np.float32)
        self.code = np.empty((self.nyc, self.nxc), dtype=np.uint8)
        self.cls = np.empty((self.nyc, self.nxc), dtype=np.uint8)
        self.tissue = np.empty((self.nyc, self.nxc), dtype=np.float32)
        xs = self.coarse_um(np.arange(self.nxc))
        for r0 in range(0, self.nyc, _STRIP):
            ys = self.coarse_um(np.arange(r0, min(self.nyc, r0 + _STRIP)))
            self._compose_strip(xs, ys, r0)

    def _compose_strip(self, xs: np.ndarray, ys: np.ndarray, r0: int) -> None:
        lay, f32 = self.layout, np.float32
        X, Y = np.meshgrid(xs, ys)
        sl = slice(r0, r0 + len(ys))
        step_um = self.step * self.mpp
        x0, y0 = float(xs[0]), float(ys[0])

        low = _Sparse(xs, ys, step_um)  # smooth fields are evaluated every 4 µm and interpolated
        T = smoothstep(-1.5, 1.5, low(lay.tissue_um))
        if len(lay.classes) > 1:
            ci = np.argmax(low(lay.class_scores), axis=0)
        else:
            ci = np.zeros(X.shape, dtype=np.int64)
        morph = lay.morph[ci]
        # stroma: bundles of wavy collagen fibres; looser, paler and cleft-rich in places
        fib = lay.fibres(X, Y, low(lay.fibre_lowres))
        loose = low(lay.loose)
        tum = morph == TUMOR
        if tum.any():
            loose = np.where(tum, loose * f32(0.4), loose)  # desmoplastic: dense collagen
        grain = value_noise(X, Y, 2.5, sub_seed(self.seed, "grain"))
        # fibres fade in and out along their length; contrast is higher where the stroma is loose
        contrast = np.clip(f32(0.45) + f32(0.4) * loose + f32(0.45) * value_noise(X, Y, 9.0, sub_seed(self.seed, "fc")),
                           0.05, 1.0)
        E = (f32(0.52) - f32(0.14) * loose + f32(0.05) * tum) * (f32(1) - f32(0.8) * contrast * (1 - fib))
        E *= f32(0.92) + f32(0.12) * grain
        cleft = smoothstep(0.25, 0.05, fib) * loose * contrast
        E *= f32(1) - f32(0.85) * cleft
        H = f32(0.09) * (f32(1) - f32(0.6) * cleft) + f32(0.015) * grain
        code = np.full(X.shape, STROMA, dtype=np.uint8)

        def put(alpha: np.ndarray, h: float | np.ndarray, e: float | np.ndarray) -> None:
            nonlocal H, E
            H = H + (h - H) * alpha
            E = E + (e - E) * alpha

        if LYMPHOID in lay.morph:
            trab = f32(1) - smoothstep(0.03, 0.055, np.abs(low(lay.trabecula_field)))
            wl = (morph == LYMPHOID) * (f32(1) - trab)
            put(wl, 0.12, 0.2 + 0.03 * grain)
            code[wl > 0.5] = LYMPH
            sinus = smoothstep(0.12, 0.18, low(lay.sinus_field)) * wl
            put(sinus, 0.05, 0.1 + 0.03 * grain)
            code[sinus > 0.5] = SINUS
        if len(self.glands):
            sd = np.full(X.shape, -1e3, dtype=np.float32)
            sdl = np.full(X.shape, -1e3, dtype=np.float32)
            stamp_sd(sd, self.glands, x0, y0, step_um)
            stamp_sd(sdl, self.glands, x0, y0, step_um, offset=-self.glands.extra)
            # basement membrane: a denser pink rim just outside each gland
            put(smoothstep(-2.5, -0.5, sd) * 0.6, 0.07, 0.62)
            apical = smoothstep(-4.0, 0.0, sdl)
            put(smoothstep(-0.5, 0.5, sd), 0.19 + 0.03 * grain, 0.26 + 0.12 * apical + 0.03 * grain)
            code[sd > 0] = EPITHELIUM
            put(smoothstep(-0.5, 0.5, sdl), 0.015, 0.03 + 0.02 * np.maximum(grain, 0))
            code[sdl > 0] = LUMEN
        if tum.any():
            nf = low(lay.nest)
            an = smoothstep(NEST_THRESHOLD - 0.012, NEST_THRESHOLD + 0.012, nf) * tum
            membrane = np.zeros(X.shape, dtype=np.float32)
            inside = np.nonzero(an > 0)
            membrane[inside] = f32(1) - smoothstep(0.25, 0.9, lay.tumour_membranes(X[inside], Y[inside]))
            put(an, 0.16 + 0.03 * grain + 0.05 * membrane, 0.25 + 0.05 * grain + 0.12 * membrane)
            code[an > 0.5] = NEST
            lum = smoothstep(NEST_LUMEN_THRESHOLD - 0.01, NEST_LUMEN_THRESHOLD + 0.01, nf) * an
            necrotic = low(lay.necrosis_field) > 0.1
            lum_all = lum
            if len(self.holes):  # cribriform: round punched-out lumens inside the nests
                sdh = np.full(X.shape, -1e3, dtype=np.float32)
                stamp_sd(sdh, self.holes, x0, y0, step_um)
                lum_all = np.maximum(lum, smoothstep(-0.5, 0.5, sdh) * an)
            nec = lum * necrotic
            put(lum_all, 0.015, 0.03)
            put(nec, 0.12 + 0.05 * grain, 0.42 * (f32(0.75) + f32(0.5) * grain))
            code[lum_all > 0.5] = LUMEN
            code[nec > 0.5] = NECROSIS
        if len(self.vessels):
            sdv = np.full(X.shape, -1e3, dtype=np.float32)
            sdw = np.full(X.shape, -1e3, dtype=np.float32)
            stamp_sd(sdv, self.vessels, x0, y0, step_um)
            stamp_sd(sdw, self.vessels, x0, y0, step_um, offset=self.vessels.extra)
            put(smoothstep(-0.4, 0.4, sdw), 0.08, 0.55 + 0.05 * grain)
            code[sdw > 0] = WALL
            put(smoothstep(-0.4, 0.4, sdv), 0.01, 0.06)
            code[sdv > 0] = VESSEL
        # fat: whole adipocytes; Voronoi cells are only computed where a lobule may be near
        cand = np.nonzero(lay.fat_candidates(X, Y))
        if cand[0].size:
            is_fat_c, memd = lay.fat(X[cand], Y[cand])
            is_fat = np.zeros(X.shape, dtype=bool)
            is_fat[cand] = is_fat_c
            membrane = np.zeros(X.shape, dtype=np.float32)
            membrane[cand] = f32(1) - smoothstep(0.3, 0.95, memd)
            put(is_fat.astype(np.float32), 0.005 + 0.06 * membrane, 0.012 + 0.5 * membrane)
            code[is_fat] = FAT
        sv = low(lay.stain_variation)
        H = H * sv * T + f32(0.004) * (1 - T)
        E = E * sv * T + f32(0.008) * (1 - T)
        code[T < 0.5] = GLASS
        self.od_bg[0, sl], self.od_bg[1, sl] = H, E
        self.code[sl], self.cls[sl], self.tissue[sl] = code, ci.astype(np.uint8), T

    # ----- sprites --------------------------------------------------------------------------
    def _index_sprites(self) -> None:
        sp = self.sprites
        order = np.argsort(sp.cy, kind="stable")
        self.sprites = sp = sp.take(order)
        self._sp_reach = float(sp.reach().max()) if len(sp) else 0.0
        self._sp_y = sp.cy
        self._sp_x = sp.cx
        self._sp_r = sp.reach()

    def sprites_in(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Indices of the sprites that touch the pixel rectangle."""
        if not len(self.sprites):
            return np.zeros(0, dtype=np.int64)
        m = self.mpp
        lo = np.searchsorted(self._sp_y, y0 * m - self._sp_reach - 1, side="left")
        hi = np.searchsorted(self._sp_y, (y0 + h) * m + self._sp_reach + 1, side="right")
        x, y, r = self._sp_x[lo:hi], self._sp_y[lo:hi], self._sp_r[lo:hi]
        hit = (x + r >= x0 * m - 1) & (x - r <= (x0 + w) * m + 1) & (y + r >= y0 * m - 1) & (y - r <= (y0 + h) * m + 1)
        return lo + np.nonzero(hit)[0]

    # ----- rendering ------------------------------------------------------------------------
    def _upsample(self, arr: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Bilinear upsampling of coarse maps (C, nyc, nxc) to the pixel rectangle: (C, h, w)."""
        s = self.step
        xs = np.arange(x0, x0 + w)
        ys = np.arange(y0, y0 + h)
        kx, ky = xs // s, ys // s
        kx0, ky0 = int(kx[0]), int(ky[0])
        sub = arr[:, ky0:int(ky[-1]) + 2, kx0:int(kx[-1]) + 2]
        if s == 1:
            return sub[:, ky - ky0][:, :, kx - kx0]
        wy = ((ys % s) / s).astype(np.float32)[None, :, None]
        wx = ((xs % s) / s).astype(np.float32)
        r = sub[:, ky - ky0]
        rows = r + (sub[:, ky - ky0 + 1] - r) * wy
        c = rows[:, :, kx - kx0]
        c += (rows[:, :, kx - kx0 + 1] - c) * wx
        return c

    def raw_od(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """(2, h, w) H and E optical densities of a pixel rectangle, before blur and class gains."""
        bg = self._upsample(self.od_bg, x0, y0, w, h)
        f = np.zeros((4, h, w), dtype=np.float32)
        draw_sprites(f, self.sprites.take(self.sprites_in(x0, y0, w, h)), x0, y0, self.mpp)
        # chromatin: fine granules plus coarser dark clumps (skewed towards dark)
        tex = self._chromatin[(np.arange(y0, y0 + h) % _TEX_TILE)][:, np.arange(x0, x0 + w) % _TEX_TILE]
        alpha, ph, pe, pt = f
        rest = np.float32(1) - alpha
        out = np.empty((2, h, w), dtype=np.float32)
        out[0] = ph * (np.float32(1) + pt * tex) + rest * bg[0] * (np.float32(1) + np.float32(0.05) * tex)
        out[1] = pe + rest * bg[1] * (np.float32(1) + np.float32(0.06) * tex)
        return out

    def render_od(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """(2, h, w) optical densities with the optical blur, before class gains.

        The blur reads a margin around the rectangle (clamped at the slide edge), so the result
        does not depend on how the slide is cut into regions.
        """
        sigma = BLUR_UM / self.mpp
        if sigma < 0.3:
            return self.raw_od(x0, y0, w, h)
        from scipy.ndimage import gaussian_filter

        m = int(math.ceil(3 * sigma))
        ax0, ay0 = max(0, x0 - m), max(0, y0 - m)
        ax1, ay1 = min(self.width, x0 + w + m), min(self.height, y0 + h + m)
        od = self.raw_od(ax0, ay0, ax1 - ax0, ay1 - ay0)
        od = gaussian_filter(od, (0, sigma, sigma), mode="nearest", truncate=3.0)
        return np.ascontiguousarray(od[:, y0 - ay0:y0 - ay0 + h, x0 - ax0:x0 - ax0 + w])

    def od_to_rgb(self, od: np.ndarray, x0: int = 0, y0: int = 0, noise: bool = True,
                  out: np.ndarray | None = None) -> np.ndarray:
        """Beer-Lambert: (2, h, w) H/E optical densities -> (h, w, 3) uint8, with the class gains,
        the neutral absorbance of the glass and position-locked pixel noise."""
        _, h, w = od.shape
        if out is None:
            out = np.empty((h, w, 3), dtype=np.uint8)
        if self.gain_map is not None:
            od = od * self._upsample(self.gain_map, x0, y0, w, h)
        if noise:
            rows = np.arange(y0, y0 + h) % _NOISE_TILE
            cols = np.arange(x0, x0 + w) % _NOISE_TILE
            nz = self._noise[rows][:, cols]
        for c in range(3):
            v = od[0] * self.h_vec[c]
            v += od[1] * self.e_vec[c]
            v += self.neutral_od
            np.negative(v, out=v)
            np.exp(v, out=v)
            v *= np.float32(255.0)
            if noise:
                v += nz[:, :, c]
            v += np.float32(0.5)
            np.clip(v, 0, 255, out=v)
            out[:, :, c] = v  # truncating v + 0.5 rounds
        return out

    def render_region(self, x0: int, y0: int, w: int, h: int, out: np.ndarray | None = None) -> np.ndarray:
        """(h, w, 3) uint8 RGB of the pixel rectangle at (x0, y0); identical however it is tiled."""
        return self.od_to_rgb(self.render_od(x0, y0, w, h), x0, y0, out=out)

    # ----- one stain for all classes --------------------------------------------------------
    def class_histogram(self, od: np.ndarray, x0: int, y0: int, stride: int = 2) -> np.ndarray:
        """(K, B, B) counts of (H, E) optical densities over each class's tissue in a rectangle."""
        k = len(self.layout.classes)
        _, h, w = od.shape
        ys = np.arange(y0, y0 + h, stride)
        xs = np.arange(x0, x0 + w, stride)
        ky = self._coarse_index((ys + 0.5) * self.mpp, self.nyc)
        kx = self._coarse_index((xs + 0.5) * self.mpp, self.nxc)
        cls = self.cls[ky][:, kx].astype(np.int64)
        tissue = self.tissue[ky][:, kx] > 0.5
        sub = od[:, ::stride, ::stride]
        hb = np.clip((sub[0] * HIST_PER_OD).astype(np.int64), 0, HIST_BINS - 1)
        eb = np.clip((sub[1] * HIST_PER_OD).astype(np.int64), 0, HIST_BINS - 1)
        idx = ((cls * HIST_BINS + hb) * HIST_BINS + eb)[tissue]
        return np.bincount(idx, minlength=k * HIST_BINS * HIST_BINS).reshape(k, HIST_BINS, HIST_BINS)

    def set_gains(self, gains: np.ndarray) -> None:
        """Use per-class (H, E) gains from now on (blended over ~6 µm across class borders)."""
        from scipy.ndimage import gaussian_filter

        self.gains = np.asarray(gains, dtype=np.float32).reshape(len(self.layout.classes), 2)
        if np.all(self.gains == 1):
            self.gain_map = None
            return
        sigma = 6.0 / (self.step * self.mpp)
        self.gain_map = np.stack([gaussian_filter(self.gains[:, ch][self.cls], sigma, mode="nearest")
                                  for ch in range(2)])

    def solve_gains(self, hist: np.ndarray) -> np.ndarray:
        """Per-class (H, E) gains that give every class the mean RGB of the average class."""
        centres = (np.arange(HIST_BINS) + 0.5) / HIST_PER_OD
        hv = self.h_vec.astype(np.float64)
        ev = self.e_vec.astype(np.float64)
        k = hist.shape[0]
        gains = np.ones((k, 2))
        weights = [hist[c].astype(np.float64) for c in range(k)]
        present = [c for c in range(k) if weights[c].sum() > 0]
        if len(present) < 2:
            return gains.astype(np.float32)
        odh = centres[:, None, None] * hv[None, None, :]  # (B, 1, 3)
        ode = centres[None, :, None] * ev[None, None, :]  # (1, B, 3)

        def mean_rgb(c: int, gh: float, ge: float) -> tuple[np.ndarray, np.ndarray]:
            wgt = weights[c] / weights[c].sum()
            inten = 255.0 * np.exp(-(gh * odh + ge * ode + float(self.neutral_od)))  # (B, B, 3)
            mean = np.einsum("ij,ijc->c", wgt, inten)
            dh = -np.einsum("ij,ijc->c", wgt, inten * gh * odh)
            de = -np.einsum("ij,ijc->c", wgt, inten * ge * ode)
            return mean, np.stack([dh, de], axis=1)

        target = np.mean([mean_rgb(c, 1.0, 1.0)[0] for c in present], axis=0)
        for c in present:
            lg = np.zeros(2)
            for _ in range(20):
                mean, jac = mean_rgb(c, *np.exp(lg))
                step, *_ = np.linalg.lstsq(jac, target - mean, rcond=None)
                lg = np.clip(lg + step, math.log(0.4), math.log(2.5))
                if np.abs(step).max() < 1e-4:
                    break
            gains[c] = np.exp(lg)
        return gains.astype(np.float32)


def chromatin_tile(mpp: float, seed: int, size: int = _TEX_TILE) -> np.ndarray:
    """A periodic, isotropic chromatin texture (zero mean, skewed towards dark clumps).

    Band-limited Gaussian noise made in Fourier space with fine granules (~0.3 µm) and coarser
    clumps (~0.8 µm), so its look is the same in µm at any mpp. The tile period (128 µm at 40x)
    is far larger than a nucleus.
    """
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft2(rng.standard_normal((size, size)))
    f2 = (np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2) / (mpp * mpp)
    out = np.zeros((size, size))
    for sigma_um, weight in ((0.28, 0.55), (0.8, 0.85)):
        band = np.fft.irfft2(spec * np.exp(-2 * math.pi ** 2 * sigma_um ** 2 * f2), s=(size, size))
        out += weight * band / (band.std() + 1e-12)
    out *= 0.45
    out += 0.35 * out * out
    out -= out.mean()
    return out.astype(np.float32)


class _Sparse:
    """Evaluate smooth functions of (x, y) on every ``factor``-th point of a grid and interpolate."""

    def __init__(self, xs: np.ndarray, ys: np.ndarray, step_um: float, factor: int = 4) -> None:
        self.shape = (len(ys), len(xs))
        self.f = factor
        nxs, nys = len(xs) // factor + 2, len(ys) // factor + 2
        self.xs = (float(xs[0]) + np.arange(nxs) * factor * step_um).astype(np.float32)
        self.ys = (float(ys[0]) + np.arange(nys) * factor * step_um).astype(np.float32)
        i = np.arange(len(xs))
        j = np.arange(len(ys))
        self.ix, self.wx = i // factor, ((i % factor) / factor).astype(np.float32)
        self.iy, self.wy = j // factor, ((j % factor) / factor).astype(np.float32)[:, None]

    def __call__(self, fn) -> np.ndarray:
        X, Y = np.meshgrid(self.xs, self.ys)
        v = fn(X, Y)
        r = v[..., self.iy, :]
        rows = r + (v[..., self.iy + 1, :] - r) * self.wy
        c = rows[..., self.ix]
        c += (rows[..., self.ix + 1] - c) * self.wx
        return c
