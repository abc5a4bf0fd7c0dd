"""A synthetic cohort whose classes need both scales of the same field (the premise of DMSL).

Four classes cross two factors, each visible at one scale only:

* **nuclear detail** (``fine`` / ``smooth``): a fine nucleus carries a chromatin texture of
  one-pixel period at 40x (0.25 µm/px) — a checkerboard around the nucleus's mean intensity.
  A 2 x 2 area mean (20x) removes it inside the nucleus (only blocks cut by its rim keep a trace,
  about 5% of the 40x difference), so the 20x images of a fine and of a smooth nucleus are nearly
  the same; the 40x image tells them apart.
* **arrangement** (``rows`` / ``scatter``): nuclei sit on parallel rows across the whole field
  (about 12 µm apart, random direction and phase per image) or at random, with the same density.
  A CNN whose receptive field spans about two nuclei at 40x sees one or two nuclei and cannot tell
  rows from scatter; at 20x the same receptive field spans two rows.

Class names are ``<detail>-<arrangement>`` (``fine-rows``, ``fine-scatter``, ``smooth-rows``,
``smooth-scatter``). Patients differ in stain (a colour shift), nuclear size and density, so a
grouped split is needed. Every image is written at 40x (0.25 µm/px) with an index CSV (image,
label, group, mpp_x, mpp_y) that ``histomag tile`` reads like any index, so the cohort goes through
the same tiling as real data; fields of 32 µm or more (128 px at 40x) cover several rows.

Example:
    >>> from histomag.synth.twoscale import make_two_scale_cohort  # doctest: +SKIP
    >>> make_two_scale_cohort("twoscale", patients=12, images_per_class=2)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from histomag.data.atomic import atomic_write_bytes, atomic_write_csv
from histomag.errors import ConfigError
from histomag.synth.cohort import png_bytes

DETAILS = ("fine", "smooth")
ARRANGEMENTS = ("rows", "scatter")
CLASSES = tuple(f"{d}-{a}" for d in DETAILS for a in ARRANGEMENTS)
#: the cohort's resolution: 40x
MPP = 0.25
#: distance between rows and between nuclei along a row, in µm (density is the same for scatter)
ROW_SPACING_UM = 12.0
NUCLEUS_SPACING_UM = 6.0


def _nuclei_centres(label: str, size: int, rng: np.random.Generator, spacing_scale: float) -> np.ndarray:
    """Nucleus centres (x, y) in px for an image of ``size`` px at 40x."""
    row_px = ROW_SPACING_UM * spacing_scale / MPP
    step_px = NUCLEUS_SPACING_UM * spacing_scale / MPP
    half = size * 0.75  # cover the rotated square
    if label.endswith("rows"):
        angle = rng.uniform(0, np.pi)
        u = np.arange(-half, half, step_px)
        v = np.arange(-half, half, row_px) + rng.uniform(0, row_px)
        uu, vv = np.meshgrid(u, v)
        uu = uu + rng.uniform(0, step_px, size=vv.shape[0])[:, None] + rng.normal(0, 0.12 * step_px, uu.shape)
        vv = vv + rng.normal(0, 0.06 * row_px, vv.shape)
        c, s = np.cos(angle), np.sin(angle)
        xy = np.stack([uu * c - vv * s, uu * s + vv * c], axis=-1).reshape(-1, 2) + size / 2
    else:
        n = rng.poisson((2 * half) ** 2 / (row_px * step_px))
        xy = rng.uniform(-half, half, size=(n, 2)) + size / 2
    keep = np.all((xy > -8) & (xy < size + 8), axis=1)
    return xy[keep]


def render_two_scale(label: str, size: int, rng: np.random.Generator, *, stain: np.ndarray | None = None,
                     radius_px: float = 7.0, spacing_scale: float = 1.0) -> np.ndarray:
    """One ``size`` x ``size`` RGB image of class ``label`` at 40x (0.25 µm/px).

    Args:
        label: one of :data:`CLASSES`.
        size: image side in px (even, so the 20x area mean is exact).
        rng: random generator.
        stain: RGB shift of the patient (default none).
        radius_px: nucleus radius at 40x.
        spacing_scale: the patient's spacing factor (density).
    """
    if label not in CLASSES:
        raise ConfigError(f"unknown two-scale class {label!r}; valid: {', '.join(CLASSES)}")
    stain = np.zeros(3) if stain is None else np.asarray(stain, float)
    img = np.empty((size, size, 3), np.float32)
    img[:] = np.array((236, 200, 220), np.float32) + stain
    # a smooth background of stroma (fibres at all scales) that neither factor depends on
    low = rng.normal(0, 1, (size // 32 + 2, size // 32 + 2))
    bg = np.asarray(Image.fromarray(low.astype(np.float32)).resize((size, size), Image.BICUBIC))
    img += (bg * 7)[..., None] * np.array((1.0, 1.2, 0.8), np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0).astype(np.float32)
    fine = label.startswith("fine")
    base = np.array((96, 52, 140), np.float32) + stain * 0.5
    for cx, cy in _nuclei_centres(label, size, rng, spacing_scale):
        r = radius_px * rng.uniform(0.85, 1.15)
        y0, y1 = max(0, int(cy - r - 1)), min(size, int(cy + r + 2))
        x0, x1 = max(0, int(cx - r - 1)), min(size, int(cx + r + 2))
        if y0 >= y1 or x0 >= x1:
            continue
        disk = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
        colour = base + rng.normal(0, 6, 3).astype(np.float32)
        patch = img[y0:y1, x0:x1]
        if fine:  # chromatin of one-pixel period: a 2 x 2 mean is the nucleus's mean colour
            patch[disk] = colour + (checker[y0:y1, x0:x1][disk] * 34)[:, None]
        else:
            patch[disk] = colour
    img += rng.normal(0, 3, (size, size, 1)).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make_two_scale_cohort(out_dir: str | os.PathLike, *, patients: int = 12, images_per_class: int = 2,
                          size: int = 768, seed: int = 0,
                          progress: Callable[[int], None] | None = None) -> Path:
    """Write the cohort's PNGs (``images/<class>/``) and ``index.csv``; return the index's path.

    Args:
        out_dir: output folder.
        patients: patients (groups for cross-validation); every patient has every class.
        images_per_class: images per patient and class.
        size: image side in px at 40x (>= 256, even).
        seed: random seed (the cohort is a function of its arguments).
        progress: called with the number of images written so far.

    Raises:
        ConfigError: fewer than 2 patients, no images, or a size below 256 px or odd.
    """
    if patients < 2 or images_per_class < 1:
        raise ConfigError(f"patients={patients} and images_per_class={images_per_class}: need at least 2 patients "
                          "and 1 image per class")
    if size < 256 or size % 2:
        raise ConfigError(f"size={size} must be even and at least 256 px")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        stain = rng.normal(0, 10, 3)
        radius = rng.uniform(6.0, 8.0)
        spacing = rng.uniform(0.9, 1.1)
        for label in CLASSES:
            for i in range(images_per_class):
                image = render_two_scale(label, size, rng, stain=stain, radius_px=radius, spacing_scale=spacing)
                rel = f"images/{label}/P{p:02d}_{label}_{i}.png"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(out / rel, png_bytes(image))
                rows.append({"image": rel, "label": label, "group": f"P{p:02d}", "mpp_x": MPP, "mpp_y": MPP})
                if progress:
                    progress(len(rows))
    index = out / "index.csv"
    atomic_write_csv(index, ["image", "label", "group", "mpp_x", "mpp_y"], rows)
    return index

