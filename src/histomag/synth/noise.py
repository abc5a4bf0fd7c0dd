"""Seamless, deterministic procedural noise in physical units (µm).

Every value is a pure function of the position and a seed (an integer hash of lattice corners), so
any window of a slide can be evaluated on its own and neighbouring windows agree exactly.

* :func:`value_noise` - smooth value noise at arbitrary points, optionally on a rotated lattice;
* :func:`fbm` - a few octaves of it (rotated differently so the lattice never shows);
* :func:`worley` - nearest and second-nearest distances to jittered lattice seeds (cells).
"""

from __future__ import annotations

import math

import numpy as np

_U32 = np.uint32


def sub_seed(seed: int, *keys: int | str) -> int:
    """A 32-bit seed derived from ``seed`` and names/numbers (stable across runs and platforms)."""
    h = (int(seed) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    for key in keys:
        if isinstance(key, str):
            k = 0
            for ch in key.encode():
                k = (k * 131 + ch) & 0xFFFFFFFF
        else:
            k = int(key) & 0xFFFFFFFFFFFFFFFF
        h ^= (k + 0x632BE59BD9B4E019 + (h << 6) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return int(h & 0xFFFFFFFF)


_M1, _M2 = _U32(0x9E3779B1), _U32(0x85EBCA77)


def _to_u32(i: np.ndarray) -> np.ndarray:
    i = np.asarray(i)
    if i.dtype == np.uint32:
        return i
    return (i.astype(np.int64) & 0xFFFFFFFF).astype(_U32)


def _finish(h: np.ndarray) -> np.ndarray:
    """Avalanche a uint32 array in place and map it to float32 in [0, 1)."""
    with np.errstate(over="ignore"):  # wrap-around multiplication is the point of a hash
        h ^= h >> _U32(16)
        h *= _U32(0x7FEB352D)
        h ^= h >> _U32(15)
        h *= _U32(0x846CA68B)
        h ^= h >> _U32(16)
    h >>= _U32(8)
    out = h.astype(np.float32)
    out *= np.float32(1.0 / (1 << 24))
    return out


def hash_unit(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Uniform float32 in [0, 1) from integer lattice coordinates and a seed."""
    with np.errstate(over="ignore"):
        hx = _to_u32(ix) * _M1
        hy = _to_u32(iy) * _M2
        hy ^= _U32(seed & 0xFFFFFFFF)
        return _finish(hx ^ hy)


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _frame(seed: int) -> tuple[float, float, float, float]:
    """A per-seed rotation (cos, sin) and lattice offset, so different seeds never share a lattice."""
    a = hash_unit(np.array(1), np.array(2), seed).item() * 2 * math.pi
    ou = hash_unit(np.array(3), np.array(4), seed).item() * 1000.0
    ov = hash_unit(np.array(5), np.array(6), seed).item() * 1000.0
    return math.cos(a), math.sin(a), ou, ov


def value_noise(x: np.ndarray, y: np.ndarray, cell: float, seed: int, rotate: bool = True) -> np.ndarray:
    """Smooth value noise in [-1, 1] at points (µm); features are about ``cell`` µm across."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    c, s, ou, ov = _frame(seed)
    inv = np.float32(1.0 / cell)
    if rotate:
        u = (x * np.float32(c) - y * np.float32(s)) * inv + np.float32(ou)
        v = (x * np.float32(s) + y * np.float32(c)) * inv + np.float32(ov)
    else:
        u = x * inv + np.float32(ou)
        v = y * inv + np.float32(ov)
    iu = np.floor(u)
    iv = np.floor(v)
    wu = _fade(u - iu)
    wv = _fade(v - iv)
    with np.errstate(over="ignore"):
        hx0 = iu.astype(np.int32).view(_U32) * _M1
        hy0 = iv.astype(np.int32).view(_U32) * _M2
        hy0 ^= _U32(seed & 0xFFFFFFFF)
        hx1 = hx0 + _M1
        hy1 = (iv.astype(np.int32) + 1).view(_U32) * _M2
        hy1 ^= _U32(seed & 0xFFFFFFFF)
    v00 = _finish(hx0 ^ hy0)
    v10 = _finish(hx1 ^ hy0)
    v01 = _finish(hx0 ^ hy1)
    v11 = _finish(hx1 ^ hy1)
    v10 -= v00
    v10 *= wu
    v10 += v00
    v11 -= v01
    v11 *= wu
    v11 += v01
    v11 -= v10
    v11 *= wv
    v11 += v10
    v11 *= np.float32(2.0)
    v11 -= np.float32(1.0)
    return v11


def fbm(x: np.ndarray, y: np.ndarray, cell: float, seed: int, octaves: int = 3,
        gain: float = 0.5, lacunarity: float = 2.13) -> np.ndarray:
    """Sum of ``octaves`` value-noise octaves (largest features ~``cell`` µm), normalised to ~[-1, 1]."""
    total = None
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        n = value_noise(x, y, cell / lacunarity ** o, sub_seed(seed, o))
        total = n * np.float32(amp) if total is None else total + n * np.float32(amp)
        norm += amp
        amp *= gain
    return total * np.float32(1.0 / norm)


def worley(x: np.ndarray, y: np.ndarray, spacing: float, seed: int, jitter: float = 0.85
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cellular noise: distance to the nearest and second-nearest seed, and the nearest seed (µm).

    Seeds sit one per ``spacing`` lattice cell, jittered by ``jitter`` of a cell, so cells are
    convex polygons about ``spacing`` µm across (Voronoi cells).

    Returns:
        (d1, d2, seed_x, seed_y) arrays shaped like ``x``.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    gx = np.floor(x / np.float32(spacing)).astype(np.int64)
    gy = np.floor(y / np.float32(spacing)).astype(np.int64)
    d1 = np.full(x.shape, np.inf, dtype=np.float32)
    d2 = np.full(x.shape, np.inf, dtype=np.float32)
    bx = np.zeros(x.shape, dtype=np.float32)
    by = np.zeros(x.shape, dtype=np.float32)
    for dj in (-1, 0, 1):
        for di in (-1, 0, 1):
            sx, sy = seed_position(gx + di, gy + dj, spacing, seed, jitter)
            d = np.hypot(x - sx, y - sy)
            closer = d < d1
            np.copyto(d2, np.where(closer, d1, np.minimum(d2, d)))
            np.copyto(bx, sx, where=closer)
            np.copyto(by, sy, where=closer)
            np.copyto(d1, d, where=closer)
    return d1, d2, bx, by


def seed_position(ix: np.ndarray, iy: np.ndarray, spacing: float, seed: int, jitter: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    sx = (ix + 0.5 + jitter * (hash_unit(ix, iy, sub_seed(seed, "wx")) - 0.5)) * spacing
    sy = (iy + 0.5 + jitter * (hash_unit(ix, iy, sub_seed(seed, "wy")) - 0.5)) * spacing
    return sx.astype(np.float32), sy.astype(np.float32)


def worley_seeds(w_um: float, h_um: float, spacing: float, seed: int, jitter: float = 0.85
                 ) -> tuple[np.ndarray, np.ndarray]:
    """All seeds of :func:`worley` (same spacing, seed, jitter) inside [0, w) x [0, h) µm."""
    iy, ix = np.mgrid[0:int(math.ceil(h_um / spacing)), 0:int(math.ceil(w_um / spacing))]
    sx, sy = seed_position(ix.ravel(), iy.ravel(), spacing, seed, jitter)
    keep = (sx >= 0) & (sx < w_um) & (sy >= 0) & (sy < h_um)
    return sx[keep], sy[keep]


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """0 below ``e0``, 1 above ``e1``, a smooth cubic between."""
    t = np.clip((x - np.float32(e0)) * np.float32(1.0 / (e1 - e0)), 0.0, 1.0)
    return t * t * (np.float32(3.0) - np.float32(2.0) * t)
