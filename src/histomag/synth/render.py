"""Render a whole synthetic H&E slide (RGB + label mask) at a physical resolution.

>>> t = render_tissue(2048, 2048, mpp=0.25, seed=1, classes=("normal", "tumor", "lymphoid"))
>>> t.rgb.shape, t.labels.shape, t.class_names
((2048, 2048, 3), (128, 128), {0: 'background', 1: 'normal', 2: 'tumor', 3: 'lymphoid'})

Class ids follow the order of ``classes`` (1, 2, ...); 0 is glass / unlabelled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from histomag.errors import ConfigError
from histomag.synth.layout import normalize_classes
from histomag.synth.scene import Scene

#: render in square blocks of this many pixels (bounded memory; results do not depend on it).
BLOCK = 1024


@dataclass
class SynthTissue:
    """A rendered synthetic slide.

    Attributes:
        rgb: (H, W, 3) uint8 image at ``mpp``.
        labels: (ceil(H / ds), ceil(W / ds)) uint8 class ids, 0 = background.
        label_downsample: ``ds``, level-0 pixels per label pixel.
        class_names: class id -> name, including ``0: "background"``.
        mpp: µm per pixel of ``rgb``.
        seed: the seed it was rendered from.
        class_gains: per class name, the (H, E) optical-density gains that equalised its colour.
    """

    rgb: np.ndarray
    labels: np.ndarray
    label_downsample: int
    class_names: dict[int, str]
    mpp: float
    seed: int = 0
    class_gains: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def objective_power(self) -> float:
        """10 / mpp (40x at 0.25 µm/px)."""
        return 10.0 / self.mpp

    def label_fractions(self) -> dict[str, float]:
        """Share of the labelled tissue covered by each class."""
        counts = np.bincount(self.labels.ravel(), minlength=max(self.class_names) + 1)
        tissue = counts[1:].sum()
        return {name: (float(counts[i]) / tissue if tissue else 0.0) for i, name in self.class_names.items() if i}


def build_scene(width: int, height: int, *, mpp: float = 0.25, seed: int = 0,
                classes: Sequence[str] = ("normal", "tumor")) -> Scene:
    """The scene behind :func:`render_tissue`: render any region with ``scene.render_region``."""
    if int(width) < 16 or int(height) < 16:
        raise ConfigError(f"synthetic slide {width}x{height} px is too small: use at least 16x16 px")
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and 0.05 <= mpp <= 20):
        raise ConfigError(f"mpp {mpp!r} out of range: render between 0.05 and 20 µm/px (0.25 is 40x)")
    return Scene(int(width), int(height), float(mpp), int(seed), normalize_classes(tuple(classes)))


def render_tissue(width: int, height: int, *, mpp: float = 0.25, seed: int = 0,
                  classes: Sequence[str] = ("normal", "tumor"), label_downsample: int = 16,
                  workers: int | None = None) -> SynthTissue:
    """Render a physically scaled synthetic H&E slide and its label mask.

    Args:
        width, height: size in pixels at ``mpp``.
        mpp: µm per pixel (0.25 = 40x); all structure is defined in µm, so at 0.5 every nucleus
            is half as many pixels across.
        seed: the same seed gives the same arrays.
        classes: 1-3 of ``"normal"``, ``"tumor"``, ``"lymphoid"``; ids follow this order.
        label_downsample: level-0 pixels per label-mask pixel.
        workers: threads rendering blocks (default: CPU count, at most 4).

    Returns:
        A :class:`SynthTissue`.
    """
    if int(label_downsample) < 1:
        raise ConfigError(f"label_downsample {label_downsample!r} must be a positive integer such as 16")
    scene = build_scene(width, height, mpp=mpp, seed=seed, classes=classes)
    rgb = np.empty((scene.height, scene.width, 3), dtype=np.uint8)
    render_into(scene, rgb, workers=workers)
    names = {0: "background", **{i + 1: n for i, n in enumerate(scene.layout.classes)}}
    gains = {n: (float(scene.gains[i, 0]), float(scene.gains[i, 1])) for i, n in enumerate(scene.layout.classes)}
    return SynthTissue(rgb=rgb, labels=scene.layout.labels(int(label_downsample)),
                       label_downsample=int(label_downsample), class_names=names, mpp=float(mpp),
                       seed=int(seed), class_gains=gains)


def render_into(scene: Scene, rgb: np.ndarray, *, equalize: bool = True, workers: int | None = None,
                block: int = BLOCK) -> None:
    """Fill ``rgb`` (H, W, 3) with the scene, block by block (threads share the blocks).

    With ``equalize`` and more than one class, a first pass renders optical densities (kept as
    float16) and their per-class histograms, :meth:`Scene.solve_gains` finds the per-class gains
    that give all classes the same mean colour, and a second pass turns densities into RGB.
    """
    jobs = [(x0, y0, min(block, scene.width - x0), min(block, scene.height - y0))
            for y0 in range(0, scene.height, block) for x0 in range(0, scene.width, block)]
    n = workers if workers is not None else min(4, os.cpu_count() or 1)

    def each(fn) -> list:
        if n <= 1 or len(jobs) == 1:
            return [fn(job) for job in jobs]
        with ThreadPoolExecutor(max_workers=n) as pool:
            return list(pool.map(fn, jobs))

    if not equalize or len(scene.layout.classes) == 1:
        each(lambda j: scene.render_region(*j, out=rgb[j[1]:j[1] + j[3], j[0]:j[0] + j[2]]))
        return
    store = np.empty((2, scene.height, scene.width), dtype=np.float16)

    def first(job: tuple[int, int, int, int]) -> np.ndarray:
        x0, y0, w, h = job
        od = scene.render_od(x0, y0, w, h)
        store[:, y0:y0 + h, x0:x0 + w] = od
        return scene.class_histogram(od, x0, y0)

    hist = np.sum(each(first), axis=0)
    scene.set_gains(scene.solve_gains(hist))

    def second(job: tuple[int, int, int, int]) -> None:
        x0, y0, w, h = job
        od = store[:, y0:y0 + h, x0:x0 + w].astype(np.float32)
        scene.od_to_rgb(od, x0, y0, out=rgb[y0:y0 + h, x0:x0 + w])

    each(second)
