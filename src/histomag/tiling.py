"""Tile plans and multi-magnification tuples.

Two tuple modes:

* ``same-fov`` (DMSL): every magnification covers the same level-0 rectangle; ``size`` is the pixel
  size at the highest magnification and each lower one gets ``size * m / m_max`` px (40x@600 +
  20x@300). The field is read once at the highest magnification and the others are area-downsampled
  from it.
* ``context`` (MSCN-style): the same centre and the same pixel size at every magnification, so lower
  magnifications see a wider field.

The plan places *reference fields* (the field at the highest magnification) on a grid over tissue
with overlap, or at seeded random positions inside tissue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from PIL import Image

from histomag.errors import ConfigError
from histomag.resolution import format_magnification
from histomag.slide.base import RESAMPLE, Slide
from histomag.tissue import TissueMask

TupleMode = Literal["same-fov", "context"]
TUPLE_MODES = ("same-fov", "context")
Placement = Literal["grid", "random"]


@dataclass(frozen=True)
class MagSpec:
    """One member of a tuple: its magnification, pixel size and field width in µm."""

    magnification: float
    size: int
    field_um: float

    @property
    def name(self) -> str:
        return format_magnification(self.magnification)


@dataclass(frozen=True)
class TupleSpec:
    """What a tuple holds, independent of any slide (physical sizes use 10x ≙ 1 µm/px)."""

    mode: TupleMode
    members: tuple[MagSpec, ...]  # ordered from highest to lowest magnification

    @property
    def magnifications(self) -> list[float]:
        return [m.magnification for m in self.members]

    @property
    def reference(self) -> MagSpec:
        return self.members[0]


def make_tuple_spec(magnifications: Sequence[float], size: int, mode: TupleMode = "same-fov",
                    power_mpp: float = 10.0) -> TupleSpec:
    """Build the tuple layout for ``magnifications`` and the pixel ``size``.

    Raises:
        ConfigError: unknown mode, fewer than one magnification, or a same-fov size that does not
            give whole pixels at every magnification.
    """
    if mode not in TUPLE_MODES:
        raise ConfigError(f"unknown tuple mode {mode!r}: use one of {', '.join(TUPLE_MODES)}")
    if size < 8:
        raise ConfigError(f"--size {size} is too small: use at least 8 px (e.g. --size 600)")
    mags = sorted((float(m) for m in magnifications), reverse=True)
    if not mags:
        raise ConfigError("no magnification given: write e.g. --mags 40,20")
    top = mags[0]
    members = []
    for m in mags:
        if mode == "same-fov":
            px = size * m / top
            if abs(px - round(px)) > 1e-6:
                raise ConfigError(
                    f"--size {size} at {format_magnification(top)} gives {px:g} px at {format_magnification(m)}; "
                    f"choose a size divisible by {_needed_divisor(top, mags)} so every magnification has whole pixels"
                )
            members.append(MagSpec(m, int(round(px)), size * power_mpp / top))
        else:
            members.append(MagSpec(m, size, size * power_mpp / m))
    return TupleSpec(mode, tuple(members))


def _needed_divisor(top: float, mags: Sequence[float]) -> int:
    for d in range(1, 10_001):
        if all(abs(d * m / top - round(d * m / top)) < 1e-9 for m in mags):
            return d
    return 1


@dataclass(frozen=True)
class Field:
    """A reference field: its centre and size in level-0 pixels."""

    x: float
    y: float
    width: float

    @property
    def left(self) -> float:
        return self.x - self.width / 2

    @property
    def top(self) -> float:
        return self.y - self.width / 2

    @property
    def key(self) -> str:
        return f"x{int(round(self.x))}_y{int(round(self.y))}"


def field_width_level0(slide: Slide, spec: MagSpec) -> float:
    """Width in level-0 px of a member's field on this slide."""
    return spec.size * slide.to_resolution(magnification=spec.magnification).mpp / slide.resolution.mpp


def plan_fields(slide: Slide, spec: TupleSpec, tissue: TissueMask, *, placement: Placement = "grid",
                overlap: float = 0.25, min_tissue: float = 0.5, n_random: int = 100,
                seed: int = 0) -> list[Field]:
    """Place reference fields over tissue.

    Args:
        slide: the slide (its resolution must be known).
        spec: tuple layout; fields are placed for its highest magnification.
        tissue: low-resolution tissue mask of the slide.
        placement: ``grid`` (with ``overlap`` as a share of the field) or seeded ``random``.
        overlap: 0 <= overlap < 1.
        min_tissue: minimum tissue share of a reference field.
        n_random: number of random fields wanted.
        seed: random seed.
    """
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"--overlap {overlap} must be in [0, 1): e.g. 0.25")
    if not 0.0 <= min_tissue <= 1.0:
        raise ConfigError(f"--min-tissue {min_tissue} must be in [0, 1]: e.g. 0.5")
    width = field_width_level0(slide, spec.reference)
    W, H = slide.dimensions
    if width > W or width > H:
        return []
    if placement == "grid":
        stride = width * (1.0 - overlap)
        xs = np.arange(0.0, W - width + 1e-6, stride)
        ys = np.arange(0.0, H - width + 1e-6, stride)
        fields = [Field(float(x + width / 2), float(y + width / 2), width) for y in ys for x in xs]
        return [f for f in fields if tissue.fraction(f.left, f.top, width, width) >= min_tissue]
    if placement != "random":
        raise ConfigError(f"unknown placement {placement!r}: use grid or random")
    rng = np.random.default_rng(seed)
    ys_t, xs_t = np.nonzero(tissue.mask)
    if len(xs_t) == 0:
        return []
    dsx, dsy = tissue.downsample
    out: list[Field] = []
    seen: set[str] = set()
    for _ in range(n_random * 20):
        if len(out) >= n_random:
            break
        i = int(rng.integers(len(xs_t)))
        cx = (xs_t[i] + rng.random()) * dsx
        cy = (ys_t[i] + rng.random()) * dsy
        cx = float(np.clip(cx, width / 2, W - width / 2))
        cy = float(np.clip(cy, width / 2, H - width / 2))
        f = Field(round(cx), round(cy), width)
        if f.key in seen or tissue.fraction(f.left, f.top, width, width) < min_tissue:
            continue
        seen.add(f.key)
        out.append(f)
    return out


def read_tuple(slide: Slide, spec: TupleSpec, field: Field, *, allow_upsample: bool = False) -> list[np.ndarray]:
    """Read every member of a tuple centred on ``field`` (highest magnification first).

    ``same-fov``: one read at the highest magnification; lower ones are area-downsampled from it,
    so all members cover exactly the same tissue. ``context``: one read per magnification.
    """
    ref = spec.reference
    first = slide.read((field.x, field.y), ref.size, magnification=ref.magnification, allow_upsample=allow_upsample)
    out = [first]
    for member in spec.members[1:]:
        if spec.mode == "same-fov":
            out.append(downsample_area(first, member.size))
        else:
            out.append(slide.read((field.x, field.y), member.size, magnification=member.magnification,
                                  allow_upsample=allow_upsample))
    return out


def downsample_area(rgb: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Area-average an RGB array down to ``size`` (exact 2x2 means for a factor of 2)."""
    w, h = (size, size) if isinstance(size, int) else size
    if (rgb.shape[1], rgb.shape[0]) == (w, h):
        return rgb
    img = Image.fromarray(rgb)
    fx, fy = rgb.shape[1] / w, rgb.shape[0] / h
    if fx == fy and float(fx).is_integer():
        return np.asarray(img.reduce(int(fx)))
    return np.asarray(img.resize((w, h), resample=RESAMPLE))

