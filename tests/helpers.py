"""Test helpers shared by several test modules (import them from here, never from another test module)."""

from __future__ import annotations

import numpy as np

#: diameter of the synthetic nuclei in µm (real nuclei are ~5-10 µm across)
NUCLEUS_UM = 7.0


def nuclei_image(height: int, width: int, mpp: float, rng: np.random.Generator, density: float = 0.004) -> np.ndarray:
    """Pink 'stroma' with purple discs of :data:`NUCLEUS_UM` µm at ``mpp`` µm/px: scale is the only cue.

    ``density`` is nuclei per µm²; the disc edges are anti-aliased so downsampling behaves like tissue.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[:] = (235, 170, 200)
    area_um2 = height * width * mpp * mpp
    r = NUCLEUS_UM / 2 / mpp
    for _ in range(max(1, int(area_um2 * density))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        y0, y1 = int(max(0, cy - r - 2)), int(min(height, cy + r + 3))
        x0, x1 = int(max(0, cx - r - 2)), int(min(width, cx + r + 3))
        d = np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx)
        a = np.clip(r + 0.5 - d, 0, 1)[..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + np.array([90, 50, 140], np.float32) * a
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
