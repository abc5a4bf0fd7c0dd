"""Discrete objects: glands, cribriform holes and vessels (shapes stamped on the coarse grid) and
cells (nuclei, red cells, debris) drawn as small sprites at full resolution.

All sizes are in µm; a sprite's pixel size follows from the mpp it is drawn at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

# ----- shapes on the coarse grid ----------------------------------------------------------------
@dataclass
class Shapes:
    """Deformed ellipses: centre, mean radius, aspect, orientation, 2nd/3rd harmonic of the outline."""

    cx: np.ndarray
    cy: np.ndarray
    r: np.ndarray
    q: np.ndarray
    phi: np.ndarray
    h2: np.ndarray
    p2: np.ndarray
    h3: np.ndarray
    p3: np.ndarray
    extra: np.ndarray  # per-kind: epithelium thickness (glands) or wall thickness (vessels)

    @classmethod
    def empty(cls) -> "Shapes":
        return cls(*(np.zeros(0, dtype=np.float32) for _ in fields(cls)))

    @classmethod
    def from_arrays(cls, **kw: np.ndarray) -> "Shapes":
        n = len(kw["cx"])
        full = {f.name: np.asarray(kw.get(f.name, np.zeros(n)), dtype=np.float32) for f in fields(cls)}
        return cls(**full)

    def __len__(self) -> int:
        return len(self.cx)

    def subset(self, mask: np.ndarray) -> "Shapes":
        return Shapes(*(getattr(self, f.name)[mask] for f in fields(self)))

    def reach(self) -> np.ndarray:
        """Radius (µm) that bounds each shape including its extra rim."""
        return self.r * np.sqrt(np.maximum(self.q, 1 / self.q)) * (1 + np.abs(self.h2) + np.abs(self.h3)) \
            + np.abs(self.extra) + 2.0

    def outline_radius(self, i: int, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points on the outline of shape ``i`` at parametric angles ``theta`` (µm, slide frame)."""
        a, b = self.r[i] * math.sqrt(self.q[i]), self.r[i] / math.sqrt(self.q[i])
        k = 1 + self.h2[i] * np.cos(2 * theta + self.p2[i]) + self.h3[i] * np.cos(3 * theta + self.p3[i])
        # a point at polar angle theta on the deformed ellipse (in the shape's own frame)
        rr = k / np.sqrt((np.cos(theta) / a) ** 2 + (np.sin(theta) / b) ** 2)
        c, s = math.cos(self.phi[i]), math.sin(self.phi[i])
        u, v = rr * np.cos(theta), rr * np.sin(theta)
        return self.cx[i] + u * c - v * s, self.cy[i] + u * s + v * c


def shape_sd(shapes: Shapes, i: int, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Approximate signed distance (µm, positive inside) to the outline of shape ``i``."""
    dx = X - shapes.cx[i]
    dy = Y - shapes.cy[i]
    c, s = math.cos(shapes.phi[i]), math.sin(shapes.phi[i])
    u = dx * np.float32(c) + dy * np.float32(s)
    v = -dx * np.float32(s) + dy * np.float32(c)
    a = shapes.r[i] * math.sqrt(shapes.q[i])
    b = shapes.r[i] / math.sqrt(shapes.q[i])
    rho = np.sqrt((u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2)
    if shapes.h2[i] or shapes.h3[i]:
        theta = np.arctan2(v, u)
        rho /= 1 + shapes.h2[i] * np.cos(2 * theta + shapes.p2[i]) + shapes.h3[i] * np.cos(3 * theta + shapes.p3[i])
    return (np.float32(1.0) - rho) * np.float32(shapes.r[i])


def stamp_sd(target: np.ndarray, shapes: Shapes, x0: float, y0: float, step: float,
             offset: np.ndarray | None = None) -> None:
    """Max-combine each shape's signed distance (+ ``offset[i]``) into ``target`` (a grid whose
    point (r, c) sits at (x0 + c*step, y0 + r*step) µm)."""
    if not len(shapes):
        return
    ny, nx = target.shape
    reach = shapes.reach()
    for i in range(len(shapes)):
        c0 = max(0, int(math.floor((shapes.cx[i] - reach[i] - x0) / step)))
        c1 = min(nx, int(math.ceil((shapes.cx[i] + reach[i] - x0) / step)) + 1)
        r0 = max(0, int(math.floor((shapes.cy[i] - reach[i] - y0) / step)))
        r1 = min(ny, int(math.ceil((shapes.cy[i] + reach[i] - y0) / step)) + 1)
        if c0 >= c1 or r0 >= r1:
            continue
        xs = (x0 + np.arange(c0, c1) * step).astype(np.float32)[None, :]
        ys = (y0 + np.arange(r0, r1) * step).astype(np.float32)[:, None]
        sd = shape_sd(shapes, i, xs, ys)
        if offset is not None:
            sd += np.float32(offset[i])
        np.maximum(target[r0:r1, c0:c1], sd, out=target[r0:r1, c0:c1])


# ----- sprites ----------------------------------------------------------------------------------
@dataclass
class Sprites:
    """Cells drawn at full resolution. Sizes in µm; colours as H and E optical densities.

    A sprite is a deformed ellipse (semi-axes ``a`` along ``theta`` and ``b``) with an antialiased
    edge; its haematoxylin rises from ``hc`` in the centre to ``hr`` at the rim (vesicular nuclei
    have a pale centre and a dark membrane), ``ta`` scales the chromatin texture, and up to two
    nucleoli (offset ``n*u``/``n*v`` in the sprite frame, radius ``n*r``) add H and E.
    """

    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    h2: np.ndarray
    p2: np.ndarray
    h3: np.ndarray
    p3: np.ndarray
    hc: np.ndarray
    hr: np.ndarray
    ec: np.ndarray
    er: np.ndarray
    rim0: np.ndarray
    ta: np.ndarray
    n1u: np.ndarray
    n1v: np.ndarray
    n1r: np.ndarray
    n1h: np.ndarray
    n1e: np.ndarray
    n2u: np.ndarray
    n2v: np.ndarray
    n2r: np.ndarray
    n2h: np.ndarray
    n2e: np.ndarray
    kind: np.ndarray  # int8 code of the cell type (for tests and statistics)

    @classmethod
    def make(cls, n: int, **kw: np.ndarray | float) -> "Sprites":
        out = {}
        for f in fields(cls):
            v = kw.get(f.name, 0.0)
            dtype = np.int8 if f.name == "kind" else np.float32
            out[f.name] = np.broadcast_to(np.asarray(v, dtype=dtype), (n,)).copy()
        return cls(**out)

    @classmethod
    def concat(cls, parts: list["Sprites"]) -> "Sprites":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.make(0)
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def __len__(self) -> int:
        return len(self.cx)

    def take(self, idx: np.ndarray) -> "Sprites":
        return Sprites(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def reach(self) -> np.ndarray:
        """Radius (µm) bounding each sprite."""
        return np.maximum(self.a, self.b) * (1 + np.abs(self.h2) + np.abs(self.h3)) + 0.8


#: edge ramp of sprites in µm (at least ~0.7 px so the drawn area stays right at low resolution).
EDGE_UM = 0.3
_MAX_BATCH_PX = 1 << 21


def draw_sprites(fields4: np.ndarray, sp: Sprites, x0: int, y0: int, mpp: float) -> None:
    """Composite sprites ("over", premultiplied) into ``fields4`` = (alpha, H, E, texture amount),
    shape (4, h, w), whose pixel (0, 0) is slide pixel (x0, y0)."""
    if not len(sp):
        return
    _, h, w = fields4.shape
    edge = max(EDGE_UM, 0.7 * mpp)
    reach_px = sp.reach() / mpp + 1.0
    size = (np.ceil(2 * reach_px).astype(np.int64) + 2 + 3) // 4 * 4
    # sprite centres and windows in slide pixels (float64), so a sprite is drawn identically
    # whichever block it is drawn into
    cxp = sp.cx.astype(np.float64) / mpp - 0.5
    cyp = sp.cy.astype(np.float64) / mpp - 0.5
    for s in np.unique(size):
        group = np.nonzero(size == s)[0]
        step = max(1, _MAX_BATCH_PX // int(s * s))
        for g0 in range(0, len(group), step):
            idx = group[g0:g0 + step]
            ox = np.round(cxp[idx]).astype(np.int64) - int(s) // 2
            oy = np.round(cyp[idx]).astype(np.int64) - int(s) // 2
            batch = _rasterize(sp.take(idx), cxp[idx] - ox, cyp[idx] - oy, int(s), mpp, edge)
            _paste(fields4, batch, ox - x0, oy - y0, h, w)


def _rasterize(sp: Sprites, lx: np.ndarray, ly: np.ndarray, s: int, mpp: float, edge: float) -> np.ndarray:
    """(n, 4, s, s) premultiplied sprite layers; (lx, ly) is each centre in window pixels."""
    f32 = np.float32
    grid = np.arange(s, dtype=np.float32)
    dx = (grid[None, None, :] - lx.astype(np.float32)[:, None, None]) * f32(mpp)
    dy = (grid[None, :, None] - ly.astype(np.float32)[:, None, None]) * f32(mpp)

    def col(v: np.ndarray) -> np.ndarray:
        return v.astype(np.float32)[:, None, None]

    c, sn = col(np.cos(sp.theta)), col(np.sin(sp.theta))
    u = dx * c + dy * sn
    v = dy * c - dx * sn
    rho = np.sqrt((u / col(sp.a)) ** 2 + (v / col(sp.b)) ** 2)
    if np.any(sp.h2) or np.any(sp.h3):
        r = np.sqrt(u * u + v * v) + f32(1e-6)
        cu, sv = u / r, v / r
        cos2, sin2 = cu * cu - sv * sv, f32(2) * cu * sv
        cos3, sin3 = cu * (f32(4) * cu * cu - f32(3)), sv * (f32(3) - f32(4) * sv * sv)
        k = (f32(1) + col(sp.h2) * (cos2 * col(np.cos(sp.p2)) - sin2 * col(np.sin(sp.p2)))
             + col(sp.h3) * (cos3 * col(np.cos(sp.p3)) - sin3 * col(np.sin(sp.p3))))
        rho /= k
    reff = col(np.sqrt(sp.a * sp.b))
    out = np.empty((len(sp), 4, s, s), dtype=np.float32)
    alpha = np.clip((f32(1) - rho) * reff * f32(1.0 / edge) + f32(0.5), 0, 1)
    rim0 = col(sp.rim0)
    t = np.clip((rho - rim0) / (f32(1.0) - rim0 + f32(1e-3)), 0, 1)
    rim = t * t * (f32(3) - f32(2) * t)
    hval = col(sp.hc) + col(sp.hr - sp.hc) * rim
    eval_ = col(sp.ec) + col(sp.er - sp.ec) * rim
    for pre in ("n1", "n2"):
        rad = getattr(sp, pre + "r")
        if not np.any(rad > 0):
            continue
        d = np.sqrt((u - col(getattr(sp, pre + "u"))) ** 2 + (v - col(getattr(sp, pre + "v"))) ** 2)
        g = np.clip((col(rad) - d) * f32(1.0 / (2 * edge)) + f32(0.5), 0, 1)
        hval += col(getattr(sp, pre + "h")) * g
        eval_ += col(getattr(sp, pre + "e")) * g
    out[:, 0] = alpha
    out[:, 1] = alpha * hval
    out[:, 2] = alpha * eval_
    out[:, 3] = alpha * col(sp.ta)
    return out


def _paste(fields4: np.ndarray, batch: np.ndarray, ox: np.ndarray, oy: np.ndarray, h: int, w: int) -> None:
    s = batch.shape[-1]
    for i in range(len(ox)):
        x0, y0 = int(ox[i]), int(oy[i])
        bx0, by0 = max(0, x0), max(0, y0)
        bx1, by1 = min(w, x0 + s), min(h, y0 + s)
        if bx0 >= bx1 or by0 >= by1:
            continue
        spr = batch[i, :, by0 - y0:by1 - y0, bx0 - x0:bx1 - x0]
        dst = fields4[:, by0:by1, bx0:bx1]
        dst *= np.float32(1.0) - spr[0]
        dst += spr
