"""Tile plans and multi-magnification tuples.

Two tuple modes:

* ``same-fov`` (DMSL): every magnification covers the same level-0 rectangle; ``size`` is the pixel
  size at the highest magnification and each lower one gets ``size * m / m_max`` px (40x@600 +
  20x@300). The field is read once at the highest magnification and the others are area-downsampled
  from it.
* ``context`` (MSCN-style): the same centre and the same pixel size at every magnification, so lower
  magnifications see a wider field.

The plan places *reference fields* (the field at the highest magnification) on a grid over tissue
with overlap, or at seeded random positions inside tissue (a jittered grid of candidates ranked by
seeded keys, so that a local change to the mask or the slide moves only the fields near it).
"""

from __future__ import annotations

import math
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

#: a plan never holds more fields than this per slide, whatever its size (time and memory stay bounded)
MAX_FIELDS = 1_000_000
#: nor more than one field per this many level-0 pixels of the slide: more means fields of a few
#: pixels (a request far above the scan resolution) or an overlap close to 1, never a useful plan
MIN_PIXELS_PER_FIELD = 16 * 16
#: a small image may always hold this many (heavily overlapping or random) fields
MIN_FIELD_BUDGET = 10_000
#: the largest tuple member in pixels (an 8192 px RGB image is 192 MiB)
MAX_SIZE = 8192


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
        raise ConfigError(f"size={size} is too small: use at least 8 px (e.g. size=600)")
    if size > MAX_SIZE:
        raise ConfigError(f"size={size} is too large: one member would be {3 * size * size / 2**20:,.0f} MiB; "
                          f"use at most {MAX_SIZE} px (e.g. size=600)")
    mags = sorted((float(m) for m in magnifications), reverse=True)
    if not mags:
        raise ConfigError("no magnification given: write e.g. magnifications=(40, 20)")
    top = mags[0]
    members = []
    for m in mags:
        if mode == "same-fov":
            px = size * m / top
            if abs(px - round(px)) > 1e-6:
                raise ConfigError(
                    f"size={size} at {format_magnification(top)} gives {px:g} px at {format_magnification(m)}; "
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


def check_spec_resolution(slide: Slide, spec: TupleSpec, *, allow_upsample: bool = False) -> None:
    """Refuse, before any planning, a tuple member above the slide's scan resolution.

    Raises:
        MissingResolutionError: the slide has no usable resolution.
        UpsampleError: a magnification is above the scan resolution and not ``allow_upsample``.
    """
    for member in spec.members:
        slide.check_not_upsample(slide.to_resolution(magnification=member.magnification), allow_upsample)


def max_fields(dimensions: tuple[int, int]) -> int:
    """The most fields a plan may hold on a slide of ``dimensions`` (level-0 px).

    One field per :data:`MIN_PIXELS_PER_FIELD` pixels of the slide, at least
    :data:`MIN_FIELD_BUDGET` and at most :data:`MAX_FIELDS`.
    """
    w, h = dimensions
    return int(min(MAX_FIELDS, max(MIN_FIELD_BUDGET, w * h // MIN_PIXELS_PER_FIELD)))


def count_fields(dimensions: tuple[int, int], width: float, *, placement: Placement = "grid",
                 overlap: float = 0.25, n_random: int = 100) -> tuple[int, str]:
    """How many reference fields a plan would place, computed without placing any.

    Returns:
        The count (before the tissue rule, so an upper bound of the plan) and how it arises, for messages.
    """
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap={overlap} must be in [0, 1): e.g. overlap=0.25")
    W, H = dimensions
    if width > W or width > H:
        return 0, "no field fits"
    if placement == "random":
        return max(int(n_random), 0), f"{int(n_random):,} random fields"
    stride = width * (1.0 - overlap)
    nx = max(0, math.ceil((W - width + 1e-6) / stride))
    ny = max(0, math.ceil((H - width + 1e-6) / stride))
    return nx * ny, f"a {nx:,} x {ny:,} grid of {width:.4g}-px fields every {stride:.4g} px"


def check_plan_size(slide: Slide, width: float, *, placement: Placement = "grid", overlap: float = 0.25,
                    n_random: int = 100) -> int:
    """Refuse a plan with more fields than :func:`max_fields` allows for the slide's size.

    Returns:
        The number of fields (an upper bound, before the tissue rule).

    Raises:
        ConfigError: naming the count, how it arises and the limit.
    """
    n, how = count_fields(slide.dimensions, width, placement=placement, overlap=overlap, n_random=n_random)
    limit = max_fields(slide.dimensions)
    if n > limit:
        W, H = slide.dimensions
        fix = ("ask for fewer random fields" if placement == "random"
               else "ask for larger fields (a lower magnification or a larger size) or less overlap")
        raise ConfigError(f"{slide.path.name}: the plan would hold {n:,} fields ({how}) on a {W:,} x {H:,} px slide, "
                          f"more than the {limit:,} a slide of this size allows; {fix}")
    return n


def plan_fields(slide: Slide, spec: TupleSpec, tissue: TissueMask, *, placement: Placement = "grid",
                overlap: float = 0.25, min_tissue: float = 0.5, n_random: int = 100,
                seed: int = 0) -> list[Field]:
    """Place reference fields over tissue.

    Args:
        slide: the slide (its resolution must be known).
        spec: tuple layout; fields are placed for its highest magnification.
        tissue: low-resolution tissue mask of the slide.
        placement: ``grid`` (with ``overlap`` as a share of the field) or seeded ``random`` (local:
            see :func:`_stable_random_fields`).
        overlap: 0 <= overlap < 1.
        min_tissue: minimum tissue share of a reference field.
        n_random: number of random fields wanted.
        seed: random seed.

    Raises:
        ConfigError: a bad overlap, min_tissue or placement, or more fields than the slide's size
            allows (:func:`check_plan_size`; counted before any field is placed).
    """
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap={overlap} must be in [0, 1): e.g. overlap=0.25")
    if not 0.0 <= min_tissue <= 1.0:
        raise ConfigError(f"min_tissue={min_tissue} must be in [0, 1]: e.g. min_tissue=0.5")
    if placement not in ("grid", "random"):
        raise ConfigError(f"unknown placement {placement!r}: use grid or random")
    width = field_width_level0(slide, spec.reference)
    W, H = slide.dimensions
    if width > W or width > H:
        return []
    check_plan_size(slide, width, placement=placement, overlap=overlap, n_random=n_random)
    if placement == "grid":
        stride = width * (1.0 - overlap)
        xs = np.arange(0.0, W - width + 1e-6, stride)
        ys = np.arange(0.0, H - width + 1e-6, stride)
        fields = [Field(float(x + width / 2), float(y + width / 2), width) for y in ys for x in xs]
        return [f for f in fields if tissue.fraction(f.left, f.top, width, width) >= min_tissue]
    return _stable_random_fields(W, H, width, tissue, min_tissue=min_tissue, n=int(n_random), seed=seed)


#: candidate cells of a random plan have this side, as a share of the field width (4 candidates per field area)
CELL_SHARE = 0.5
#: a random plan never scores more candidate cells than this (larger slides get larger cells)
MAX_CANDIDATES = 4_000_000


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, vectorised: a well-mixed 64-bit hash of each entry."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def cell_uniforms(seed: int, rows: np.ndarray, cols: np.ndarray, stream: int) -> np.ndarray:
    """Uniform numbers in [0, 1) that depend only on ``(seed, row, col, stream)`` of each cell.

    A cell's numbers never depend on any other cell, the mask or the slide's size: that is
    what keeps a random plan local (see :func:`plan_fields`).
    """
    with np.errstate(over="ignore"):
        key = _splitmix64(np.full(rows.shape, np.uint64(seed & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
                          ^ np.uint64(stream * 0x632BE59BD9B4E019 & 0xFFFFFFFFFFFFFFFF))
        key = _splitmix64(key ^ rows.astype(np.uint64))
        key = _splitmix64(key ^ (cols.astype(np.uint64) << np.uint64(32)))
    return (key >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _stable_random_fields(W: int, H: int, width: float, tissue: TissueMask, *, min_tissue: float, n: int,
                          seed: int) -> list[Field]:
    """Seeded random fields whose placement is local: candidates on a jittered grid, the n best keys kept.

    The range of field centres is cut into square cells (side ``CELL_SHARE`` of the field width;
    smaller when that gives fewer than 4 cells per field wanted, larger on huge slides so at most
    :data:`MAX_CANDIDATES` cells); each cell holds one candidate
    centre at a seeded uniform position inside it and a seeded priority key, both functions of
    ``(seed, cell)`` alone. Candidates with ``min_tissue`` are ranked by key and the first ``n`` kept
    (bottom-k sampling). A change to a few mask pixels therefore changes only the candidates whose
    field touches them: each one lost lets in the next key, each one gained may push out the last.
    """
    if n <= 0:
        return []
    span_x, span_y = W - width, H - width  # centres lie in [width/2, W - width/2]
    area = max(span_x, 1.0) * max(span_y, 1.0)
    # at least 4 candidates per field wanted (finer cells on a small image asked for many fields); the cell
    # depends on the slide's size and n only, never on the mask, so placement stays local
    cell = min(width * CELL_SHARE, math.sqrt(area / (4 * n)))
    cell = max(cell, math.sqrt(area / MAX_CANDIDATES), 1.0)
    nx, ny = int(span_x // cell) + 1, int(span_y // cell) + 1
    rows, cols = np.divmod(np.arange(nx * ny, dtype=np.int64), nx)
    cx = width / 2 + np.minimum((cols + cell_uniforms(seed, rows, cols, 1)) * cell, span_x)
    cy = width / 2 + np.minimum((rows + cell_uniforms(seed, rows, cols, 2)) * cell, span_y)
    cx, cy = np.round(cx), np.round(cy)
    boxes = np.stack([cx - width / 2, cy - width / 2, np.full_like(cx, width), np.full_like(cy, width)], axis=1)
    ok = np.flatnonzero(tissue.fractions(boxes) >= min_tissue - 1e-12)
    if len(ok) == 0:
        return []
    order = ok[np.argsort(cell_uniforms(seed, rows[ok], cols[ok], 3), kind="stable")][:n]
    return [Field(float(cx[i]), float(cy[i]), width) for i in order]


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

