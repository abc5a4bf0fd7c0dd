"""Where glands, holes, vessels and cells go, and what each cell looks like.

Shapes (glands, cribriform holes, vessels) are placed from the layout alone; cells are placed on
jittered hexagonal lattices and kept or dropped by what the coarse structure map says is there
(a tumour nucleus only inside a tumour nest, a lymphocyte in lymphoid tissue, a fibroblast in
stroma, ...). Sizes are physical (µm): lymphocytes ~7 µm round and dark, normal epithelial nuclei
~8-10 µm ordered at the base of glands, tumour nuclei 12-20 µm, pleomorphic and vesicular.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from histomag.synth.layout import (EPITHELIUM, LYMPH, NECROSIS, NEST, NEST_LUMEN_THRESHOLD, NEST_THRESHOLD,
                                   NORMAL, SINUS, STROMA, TUMOR, Layout)
from histomag.synth.objects import Shapes, Sprites, shape_sd

#: cell kinds (Sprites.kind)
LYMPHOCYTE, EPITHELIAL, TUMOUR_CELL, FIBROBLAST, ENDOTHELIAL, RED_CELL, DEBRIS, LARGE_LYMPHOID = range(1, 9)

PointFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def hex_lattice(w_um: float, h_um: float, spacing: float, jitter: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Points of a jittered hexagonal lattice covering [0, w) x [0, h) µm."""
    dy = spacing * math.sqrt(3) / 2
    ny, nx = int(h_um / dy) + 2, int(w_um / spacing) + 2
    j, i = np.mgrid[0:ny, 0:nx]
    x = (i + 0.5 * (j % 2)) * spacing + rng.uniform(-jitter, jitter, i.shape)
    y = (j + 0.5) * dy + rng.uniform(-jitter, jitter, i.shape)
    keep = (x >= 0) & (x < w_um) & (y >= 0) & (y < h_um)
    return x[keep].astype(np.float32), y[keep].astype(np.float32)


# ----- shapes ----------------------------------------------------------------------------------
def make_glands(layout: Layout, rng: np.random.Generator) -> Shapes:
    """Normal glands: regular, round-to-oval, evenly spaced, a lumen inside a ~17 µm epithelium.

    Candidates on a fine lattice are taken in random order and kept when they lie in normal
    tissue and leave a stroma gap of ``gland_gap_um`` to every gland kept before (dart throwing),
    so glands pack evenly into regions of any shape.
    """
    if NORMAL not in layout.morph:
        return Shapes.empty()
    gap = layout.style.gland_gap_um
    x, y = hex_lattice(layout.w_um, layout.h_um, 24.0, 6.0, rng)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    n = len(x)
    r = rng.uniform(30, 52, n).astype(np.float32)
    q = rng.uniform(1.0, 1.35, n).astype(np.float32)
    reach = r * np.sqrt(q)
    ok = (layout.tissue_um(x, y) > r) & (layout.morphology(x, y) == NORMAL)
    idx = np.nonzero(ok)[0]
    outside = np.zeros(len(idx))
    for ang in np.linspace(0, 2 * math.pi, 8, endpoint=False):
        px = x[idx] + 1.1 * reach[idx] * math.cos(ang)
        py = y[idx] + 1.1 * reach[idx] * math.sin(ang)
        m = layout.morphology(px, py)
        outside += (m != NORMAL) + 2 * layout.fat(px, py)[0]
    idx = idx[(outside <= 2) & ~layout.fat(x[idx], y[idx])[0]]
    kept: list[int] = []
    for i in idx:
        if kept:
            k = np.asarray(kept)
            if np.any(np.hypot(x[k] - x[i], y[k] - y[i]) < reach[k] + reach[i] + gap):
                continue
        kept.append(int(i))
    k = np.asarray(kept, dtype=np.int64)
    m = len(k)
    thick = np.minimum(rng.uniform(19, 25, m), r[k] - 8)
    return Shapes.from_arrays(cx=x[k], cy=y[k], r=r[k], q=q[k], phi=rng.uniform(0, math.pi, m),
                              h2=rng.uniform(0, 0.08, m), p2=rng.uniform(0, 2 * math.pi, m),
                              h3=rng.uniform(0, 0.06, m), p3=rng.uniform(0, 2 * math.pi, m), extra=thick)


def make_holes(layout: Layout, rng: np.random.Generator) -> Shapes:
    """Cribriform 'punched-out' lumens inside tumour nests."""
    if TUMOR not in layout.morph:
        return Shapes.empty()
    x, y = hex_lattice(layout.w_um, layout.h_um, 36.0, 11.0, rng)
    n = len(x)
    nf = layout.nest(x, y)
    keep = ((layout.morphology(x, y) == TUMOR) & (nf > NEST_THRESHOLD + 0.13) & (nf < NEST_LUMEN_THRESHOLD - 0.03)
            & (rng.random(n) < 0.5))
    return Shapes.from_arrays(cx=x, cy=y, r=rng.uniform(4.5, 12.0, n), q=rng.uniform(1.0, 1.3, n),
                              phi=rng.uniform(0, math.pi, n), h2=rng.uniform(0, 0.08, n),
                              p2=rng.uniform(0, 2 * math.pi, n)).subset(keep)


def make_vessels(layout: Layout, glands: Shapes, rng: np.random.Generator) -> Shapes:
    """Capillaries and small vessels (lumen + pink wall) in stroma and lymphoid tissue."""
    x, y = hex_lattice(layout.w_um, layout.h_um, 105.0, 32.0, rng)
    n = len(x)
    big = rng.random(n) < 0.3
    r = np.where(big, rng.uniform(8, 18, n), rng.uniform(3.5, 7.5, n))
    wall = np.where(big, rng.uniform(3, 7, n), rng.uniform(1.5, 2.5, n))
    m = layout.morphology(x, y)
    keep = (layout.tissue_um(x, y) > 30) & (rng.random(n) < 0.5) & ~layout.fat(x, y)[0]
    if TUMOR in layout.morph:
        keep &= ~((m == TUMOR) & (layout.nest(x, y) > NEST_THRESHOLD - 0.08))
    if len(glands):
        for i in np.nonzero(keep)[0]:
            d = np.hypot(glands.cx - x[i], glands.cy - y[i])
            if np.any(d < glands.reach() + r[i] + wall[i] + 6):
                keep[i] = False
    return Shapes.from_arrays(cx=x, cy=y, r=r, q=rng.uniform(1.0, 1.8, n), phi=rng.uniform(0, math.pi, n),
                              h2=rng.uniform(0, 0.06, n), p2=rng.uniform(0, 2 * math.pi, n),
                              extra=wall).subset(keep)


# ----- cells -----------------------------------------------------------------------------------
def _round_cells(rng: np.random.Generator, n: int, d_lo: float, d_hi: float, q_hi: float) -> dict:
    d = rng.uniform(d_lo, d_hi, n)
    q = rng.uniform(1.0, q_hi, n)
    return dict(a=d / 2 * np.sqrt(q), b=d / 2 / np.sqrt(q), theta=rng.uniform(0, math.pi, n),
                p2=rng.uniform(0, 2 * math.pi, n), p3=rng.uniform(0, 2 * math.pi, n))


def lymphocytes(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, ns: float) -> Sprites:
    """Small (~7 µm), round, dark, evenly stained nuclei."""
    n = len(x)
    hc = rng.uniform(1.5, 1.8, n)
    return Sprites.make(n, cx=x, cy=y, **_round_cells(rng, n, 6.2 * ns, 7.6 * ns, 1.15),
                        h2=rng.uniform(0, 0.06, n), h3=rng.uniform(0, 0.05, n), hc=hc, hr=hc * 1.08,
                        ec=0.10, er=0.12, rim0=0.5, ta=rng.uniform(0.3, 0.45, n), kind=LYMPHOCYTE)


def large_lymphoid(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, ns: float) -> Sprites:
    """Occasional larger, paler lymphoid cells (centroblasts/histiocytes) with a nucleolus."""
    n = len(x)
    return Sprites.make(n, cx=x, cy=y, **_round_cells(rng, n, 9.0 * ns, 11.0 * ns, 1.25),
                        h2=rng.uniform(0, 0.06, n), h3=rng.uniform(0, 0.05, n), hc=rng.uniform(0.5, 0.65, n),
                        hr=1.1, ec=0.10, er=0.12, rim0=0.7, ta=0.4, n1u=rng.uniform(-1, 1, n),
                        n1v=rng.uniform(-1, 1, n), n1r=0.8, n1h=0.8, n1e=0.25, kind=LARGE_LYMPHOID)


def tumour_cells(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, ns: float) -> Sprites:
    """Large (12-20 µm), pleomorphic, vesicular nuclei with a dark rim and 1-2 visible nucleoli."""
    n = len(x)
    d = np.clip(np.exp(rng.normal(math.log(15.0), 0.15, n)), 11.5, 20.5) * ns
    q = rng.uniform(1.0, 1.5, n)
    a, b = d / 2 * np.sqrt(q), d / 2 / np.sqrt(q)
    bizarre = rng.random(n) < 0.08
    dark = rng.random(n) < 0.15
    n_nucleoli = rng.choice([0, 1, 2], n, p=[0.1, 0.62, 0.28])
    kw: dict = dict(cx=x, cy=y, a=a, b=b, theta=rng.uniform(0, math.pi, n), h2=rng.uniform(0, 0.1, n),
                    p2=rng.uniform(0, 2 * math.pi, n),
                    h3=np.where(bizarre, rng.uniform(0.12, 0.2, n), rng.uniform(0, 0.09, n)),
                    p3=rng.uniform(0, 2 * math.pi, n),
                    hc=np.where(dark, rng.uniform(0.95, 1.15, n), rng.uniform(0.36, 0.52, n)),
                    hr=rng.uniform(1.2, 1.45, n), ec=0.08, er=0.12, rim0=rng.uniform(0.7, 0.8, n),
                    ta=rng.uniform(0.55, 0.8, n), kind=TUMOUR_CELL)
    for j, pre in ((1, "n1"), (2, "n2")):
        has = n_nucleoli >= j
        kw[pre + "u"] = rng.uniform(-0.4, 0.4, n) * a
        kw[pre + "v"] = rng.uniform(-0.4, 0.4, n) * b
        kw[pre + "r"] = np.where(has, rng.uniform(0.9, 1.6, n) * (1.0 if j == 1 else 0.75), 0.0)
        kw[pre + "h"] = np.where(has, rng.uniform(0.8, 1.1, n), 0.0)
        kw[pre + "e"] = np.where(has, rng.uniform(0.35, 0.6, n), 0.0)
    return Sprites.make(n, **kw)


def fibroblasts(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, angle: np.ndarray, ns: float) -> Sprites:
    """Spindle nuclei (12-18 x 2.5-4 µm) lying along the collagen fibres."""
    n = len(x)
    return Sprites.make(n, cx=x, cy=y, a=rng.uniform(6.0, 9.0, n) * ns, b=rng.uniform(1.25, 1.9, n) * ns,
                        theta=angle + rng.normal(0, 0.12, n), h2=rng.uniform(0, 0.05, n),
                        p2=rng.uniform(0, 2 * math.pi, n), hc=rng.uniform(1.1, 1.3, n), hr=1.3, ec=0.12,
                        er=0.12, rim0=0.8, ta=0.12, kind=FIBROBLAST)


def debris(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> Sprites:
    """Karyorrhectic nuclear dust in necrosis: small, irregular, very dark fragments."""
    n = len(x)
    return Sprites.make(n, cx=x, cy=y, **_round_cells(rng, n, 1.4, 3.6, 1.8), h2=0.1,
                        h3=rng.uniform(0.05, 0.2, n), hc=rng.uniform(1.3, 1.8, n), hr=1.8, ec=0.2, er=0.2,
                        rim0=0.8, ta=0.3, kind=DEBRIS)


def gland_nuclei(rng: np.random.Generator, glands: Shapes, ns: float) -> Sprites:
    """One ordered row of basal, radially oriented nuclei around each normal gland."""
    xs, ys, angs = [], [], []
    for i in range(len(glands)):
        theta = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        px, py = glands.outline_radius(i, theta)
        perimeter = float(np.sum(np.hypot(np.diff(px, append=px[0]), np.diff(py, append=py[0]))))
        k = max(6, int(round(perimeter / (9.4 * ns))))
        t = np.linspace(0, 2 * math.pi, k, endpoint=False) + rng.uniform(0, 2 * math.pi)
        t += rng.uniform(-0.12, 0.12, k) * (2 * math.pi / k)
        ox, oy = glands.outline_radius(i, t)
        dx, dy = ox - glands.cx[i], oy - glands.cy[i]
        dist = np.hypot(dx, dy)
        inset = (5.4 + rng.uniform(-0.4, 0.4, k)) * ns
        xs.append(ox - dx / dist * inset)
        ys.append(oy - dy / dist * inset)
        angs.append(np.arctan2(dy, dx))
    if not xs:
        return Sprites.make(0)
    x, y, ang = np.concatenate(xs), np.concatenate(ys), np.concatenate(angs)
    n = len(x)
    has = rng.random(n) < 0.3
    return Sprites.make(n, cx=x, cy=y, a=rng.uniform(4.7, 5.3, n) * ns, b=rng.uniform(3.6, 4.0, n) * ns,
                        theta=ang + rng.normal(0, 0.08, n), h2=rng.uniform(0, 0.03, n),
                        p2=rng.uniform(0, 2 * math.pi, n), hc=rng.uniform(0.85, 1.0, n), hr=1.2, ec=0.12,
                        er=0.14, rim0=0.7, ta=0.28, n1u=rng.uniform(-1.2, 1.2, n), n1v=rng.uniform(-0.8, 0.8, n),
                        n1r=np.where(has, 0.45, 0.0), n1h=np.where(has, 0.45, 0.0), n1e=0.1, kind=EPITHELIAL)


def vessel_cells(rng: np.random.Generator, vessels: Shapes) -> Sprites:
    """Flat endothelial nuclei along each vessel wall and red cells (7-8 µm discs) in the lumen."""
    parts = []
    for i in range(len(vessels)):
        k = int(rng.integers(2, 6))
        t = rng.uniform(0, 2 * math.pi, k)
        ox, oy = vessels.outline_radius(i, t)
        dx, dy = ox - vessels.cx[i], oy - vessels.cy[i]
        dist = np.hypot(dx, dy) + 1e-6
        out = 0.45 * vessels.extra[i]
        parts.append(Sprites.make(k, cx=ox + dx / dist * out, cy=oy + dy / dist * out, a=rng.uniform(4.5, 6.5, k),
                                  b=rng.uniform(1.1, 1.6, k), theta=np.arctan2(dy, dx) + math.pi / 2,
                                  hc=1.15, hr=1.2, ec=0.12, er=0.12, rim0=0.8, ta=0.1, kind=ENDOTHELIAL))
        area = math.pi * vessels.r[i] ** 2
        m = int(rng.poisson(area / 55.0 * rng.uniform(0.1, 0.9)))
        if m:
            reach = float(vessels.reach()[i])
            px = vessels.cx[i] + rng.uniform(-reach, reach, 4 * m)
            py = vessels.cy[i] + rng.uniform(-reach, reach, 4 * m)
            inside = shape_sd(vessels, i, px.astype(np.float32), py.astype(np.float32)) > 3.6
            px, py = px[inside][:m], py[inside][:m]
            j = len(px)
            if j:
                parts.append(Sprites.make(j, cx=px, cy=py, **_round_cells(rng, j, 6.8, 7.8, 1.15), hc=0.02,
                                          hr=0.03, ec=0.5, er=0.9, rim0=0.25, ta=0.0, kind=RED_CELL))
    return Sprites.concat(parts)


def make_cells(layout: Layout, code_at: PointFn, morph_at: PointFn, glands: Shapes, vessels: Shapes,
               rng: np.random.Generator) -> Sprites:
    """Every cell of the slide, from the coarse structure map (``code_at``) and morphology map."""
    ns = layout.style.nuclear_scale
    w, h = layout.w_um, layout.h_um
    parts = [gland_nuclei(rng, glands, ns), vessel_cells(rng, vessels)]

    # lymphocytes: dense in lymphoid tissue, scattered in stroma (more around tumour)
    x, y = hex_lattice(w, h, 9.0 * ns, 2.6, rng)
    code, morph = code_at(x, y), morph_at(x, y)
    u = rng.random(len(x))
    dense = (code == LYMPH) | (code == SINUS)
    if dense.any():
        xd, yd = x[dense], y[dense]
        p = np.where(code[dense] == SINUS, 0.08, np.clip(0.86 + 0.2 * layout.follicle(xd, yd), 0.65, 0.97))
        big = rng.random(len(p)) < np.where(code[dense] == SINUS, 0.12, 0.03)
        keep = u[dense] < p
        parts.append(lymphocytes(rng, xd[keep & ~big], yd[keep & ~big], ns))
        parts.append(large_lymphoid(rng, xd[keep & big], yd[keep & big], ns))
    stroma_p = np.array([0.3, 0.12, 0.15], dtype=np.float32)
    scattered = (code == STROMA) & (u < stroma_p[morph])
    parts.append(lymphocytes(rng, x[scattered], y[scattered], ns))

    # fibroblasts along the fibres
    x, y = hex_lattice(w, h, 20.0, 6.0, rng)
    code, morph = code_at(x, y), morph_at(x, y)
    fib_p = np.array([0.6, 0.5, 0.3], dtype=np.float32)
    keep = (code == STROMA) & (rng.random(len(x)) < fib_p[morph])
    parts.append(fibroblasts(rng, x[keep], y[keep], layout.fibre_angle(x[keep], y[keep]), ns))

    # tumour cells fill the nests, crowded and disordered
    if TUMOR in layout.morph:
        x, y = layout.tumour_cell_seeds()
        x = x + rng.normal(0, 1.0, len(x)).astype(np.float32)
        y = y + rng.normal(0, 1.0, len(y)).astype(np.float32)
        keep = (code_at(x, y) == NEST) & (rng.random(len(x)) < 0.97)
        parts.append(tumour_cells(rng, x[keep], y[keep], ns))
        x, y = hex_lattice(w, h, 5.0, 2.0, rng)
        keep = (code_at(x, y) == NECROSIS) & (rng.random(len(x)) < 0.3)
        parts.append(debris(rng, x[keep], y[keep]))
    # a few intraepithelial lymphocytes in normal glands
    x, y = hex_lattice(w, h, 30.0, 9.0, rng)
    keep = (code_at(x, y) == EPITHELIUM) & (rng.random(len(x)) < 0.05)
    parts.append(lymphocytes(rng, x[keep], y[keep], ns))
    return Sprites.concat(parts)
