"""Physical resolution as a value: µm per pixel <-> objective magnification.

The convention is 10x ≙ 1.0 µm/px (20x ≙ 0.5, 40x ≙ 0.25). A slide that states both its mpp
and its objective power keeps its own ratio (e.g. an Aperio 20x scan at 0.499 µm/px has
``power_mpp = 9.98``), so "20x" on that slide means exactly its scan resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from histomag.errors import ConfigError

#: magnification x mpp for the conventional 10x ≙ 1.0 µm/px.
DEFAULT_POWER_MPP = 10.0

#: relative tolerance under which two resolutions count as the same (a 39.5x level serves 40x).
DEFAULT_REL_TOL = 0.02


@dataclass(frozen=True, order=True)
class Resolution:
    """A resolution in µm per pixel, with the product ``magnification * mpp`` used to name it.

    Attributes:
        mpp: micrometres per pixel (> 0).
        power_mpp: objective power times mpp; 10.0 unless a slide states both.
    """

    mpp: float
    power_mpp: float = DEFAULT_POWER_MPP

    def __post_init__(self) -> None:
        if not (isinstance(self.mpp, (int, float)) and math.isfinite(self.mpp) and self.mpp > 0):
            raise ConfigError(f"invalid resolution {self.mpp!r} µm/px: give a positive number such as 0.25")
        if not (math.isfinite(self.power_mpp) and self.power_mpp > 0):
            raise ConfigError(f"invalid magnification x mpp product {self.power_mpp!r}: use 10.0")

    @classmethod
    def from_mpp(cls, mpp: float, power_mpp: float = DEFAULT_POWER_MPP) -> "Resolution":
        """A resolution given in µm per pixel."""
        return cls(float(mpp), power_mpp)

    @classmethod
    def from_magnification(cls, magnification: float, power_mpp: float = DEFAULT_POWER_MPP) -> "Resolution":
        """A resolution given as objective magnification (e.g. 40 for 40x)."""
        if not (math.isfinite(magnification) and magnification > 0):
            raise ConfigError(f"invalid magnification {magnification!r}: give a positive number such as 20")
        return cls(power_mpp / float(magnification), power_mpp)

    @property
    def magnification(self) -> float:
        """Objective magnification (10x ≙ 1 µm/px unless the slide states its own ratio)."""
        return self.power_mpp / self.mpp

    def scale_from(self, other: "Resolution") -> float:
        """Factor by which an image at ``other`` is shrunk to reach this resolution (>1: downsample)."""
        return self.mpp / other.mpp

    def close_to(self, other: "Resolution", rel_tol: float = DEFAULT_REL_TOL) -> bool:
        """Whether the two mpp agree within ``rel_tol``."""
        return math.isclose(self.mpp, other.mpp, rel_tol=rel_tol)

    def at_least(self, other: "Resolution", rel_tol: float = DEFAULT_REL_TOL) -> bool:
        """Whether this resolution is as fine as ``other`` or finer (within ``rel_tol``)."""
        return self.mpp <= other.mpp * (1.0 + rel_tol)

    def length_um(self, pixels: float) -> float:
        """µm spanned by ``pixels`` pixels at this resolution."""
        return float(pixels) * self.mpp

    def length_px(self, um: float) -> float:
        """Pixels spanning ``um`` µm at this resolution."""
        return float(um) / self.mpp

    def area_mm2(self, width_px: float, height_px: float | None = None) -> float:
        """mm² covered by a ``width_px`` x ``height_px`` (default square) rectangle of pixels."""
        h = width_px if height_px is None else height_px
        return self.length_um(width_px) * self.length_um(h) / 1e6

    def coarser(self, factor: float) -> "Resolution":
        """This resolution downsampled by ``factor`` (e.g. a thumbnail's), with the same power ratio."""
        return Resolution(self.mpp * float(factor), self.power_mpp)

    def __str__(self) -> str:
        return f"{format_magnification(self.magnification)} ({self.mpp:.4g} µm/px)"


def format_magnification(magnification: float) -> str:
    """``40.0 -> '40x'``, ``2.5 -> '2.5x'``."""
    return f"{magnification:.3g}x"


def parse_magnifications(text: str) -> list[float]:
    """Parse ``"40,20"`` or ``"40x, 20x"`` into ``[40.0, 20.0]`` (order kept, duplicates refused)."""
    values: list[float] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip().lower().rstrip("x")
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"cannot read magnification {part!r} in {text!r}: write e.g. magnifications=(40, 20)") from None
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"magnification {part!r} must be positive: write e.g. magnifications=(40, 20)")
        values.append(value)
    if not values:
        raise ConfigError(f"no magnification in {text!r}: write e.g. magnifications=(40, 20)")
    if len(set(values)) != len(values):
        raise ConfigError(f"repeated magnification in {text!r}: name each once, e.g. magnifications=(40, 20)")
    return values


#: mpp-x and mpp-y further apart than this (relative) are anisotropic: pixels are resampled to square
ANISOTROPY_TOL = 0.01


def is_anisotropic(mpp_x: float, mpp_y: float, rel_tol: float = ANISOTROPY_TOL) -> bool:
    """Whether pixels of ``mpp_x`` x ``mpp_y`` µm differ in width and height by more than ``rel_tol``."""
    return abs(mpp_x - mpp_y) > rel_tol * min(mpp_x, mpp_y)


def square_pixels(image, mpp_x: float, mpp_y: float, rel_tol: float = ANISOTROPY_TOL):
    """Resample an ``(H, W[, C])`` uint8 image with non-square pixels to square ones.

    The finer axis is area-resampled to the coarser one (never an upsample), so the result has
    ``max(mpp_x, mpp_y)`` µm per pixel along both axes; pixels within ``rel_tol`` are kept as they
    are and get the coarser of the two values (never the mean, which distorts every field).

    Returns:
        ``(image, mpp)``: the square-pixel image and its µm per pixel.
    """
    import numpy as np
    from PIL import Image

    for name, value in (("mpp_x", mpp_x), ("mpp_y", mpp_y)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} {value!r} is not a positive number of µm per pixel; give e.g. 0.25")
    mpp = float(max(mpp_x, mpp_y))
    if not is_anisotropic(mpp_x, mpp_y, rel_tol):
        return image, mpp
    arr = np.asarray(image)
    h, w = arr.shape[:2]
    new_w = max(1, int(round(w * mpp_x / mpp)))
    new_h = max(1, int(round(h * mpp_y / mpp)))
    out = np.asarray(Image.fromarray(arr).resize((new_w, new_h), Image.Resampling.BOX))
    return out, mpp


# ----- plausibility of stated resolutions ----------------------------------------------------------
#: µm per pixel that a microscope or slide scanner can produce. The fine end: a 100x oil objective
#: on a small-pixel camera samples at about 0.05 µm/px, well below the ~0.2 µm diffraction limit,
#: so nothing finer is a real optical resolution (it is a unit error). The coarse end: 1x-2x
#: objectives and slide-overview (macro) cameras give about 5-40 µm/px, and a 600-dpi flatbed scan
#: of a glass slide 42 µm/px; 50 µm/px (0.2x) is coarser than any of them. The default resolution
#: tags of ordinary image tools (72, 96, 150, 300 dpi = 352.8, 264.6, 169.3, 84.7 µm/px) all fall
#: above it, which is the point: such a value says "nobody set a resolution", not "0.03x".
PLAUSIBLE_MPP: tuple[float, float] = (0.05, 50.0)

#: objective powers that exist: 1x (and 1.25x) scanning objectives up to 100x oil immersion, with
#: room for 150x. 0 and values like 1000 are placeholders or unit errors, never a real objective.
PLAUSIBLE_OBJECTIVE_POWER: tuple[float, float] = (1.0, 150.0)

#: resolution tags that image tools write when nobody set one (dots per inch)
DEFAULT_DPIS: tuple[int, ...] = (72, 96, 150, 200, 300, 600)


def is_plausible_mpp(mpp: float) -> bool:
    """Whether ``mpp`` µm/px lies in :data:`PLAUSIBLE_MPP` (a resolution a microscope produces)."""
    return math.isfinite(mpp) and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


def is_plausible_objective_power(power: float) -> bool:
    """Whether ``power`` lies in :data:`PLAUSIBLE_OBJECTIVE_POWER` (an objective that exists)."""
    return math.isfinite(power) and PLAUSIBLE_OBJECTIVE_POWER[0] <= power <= PLAUSIBLE_OBJECTIVE_POWER[1]


def implausible_mpp_cause(mpp: float) -> str:
    """The likely origin of an implausible mpp, for a warning (``"a default 72 dpi resolution tag"``)."""
    if not (math.isfinite(mpp) and mpp > 0):
        return "a placeholder value"
    if mpp < PLAUSIBLE_MPP[0]:
        return "a unit error (nm or mm taken for µm?)"
    dpi = 25400.0 / mpp
    for default in DEFAULT_DPIS:
        if math.isclose(dpi, default, rel_tol=0.01):
            return f"a default {default} dpi resolution tag"
    return f"a default or wrong resolution tag ({dpi:.3g} dpi)"


def implausible_mpp_message(mpp: float) -> str:
    """One line naming an implausible stated mpp, the plausible range and the likely cause."""
    return (f"the metadata says {mpp:.4g} µm/px, outside what microscopes produce "
            f"({PLAUSIBLE_MPP[0]:g}-{PLAUSIBLE_MPP[1]:g} µm/px), likely {implausible_mpp_cause(mpp)}")


def implausible_power_message(power: float) -> str:
    """One line naming an implausible stated objective power and the plausible range."""
    return (f"the metadata says objective power {power:.4g}x, outside the objectives that exist "
            f"({PLAUSIBLE_OBJECTIVE_POWER[0]:g}-{PLAUSIBLE_OBJECTIVE_POWER[1]:g}x), likely a placeholder")


def parse_mpp(text: str) -> float | tuple[float, float]:
    """Parse ``"0.25"`` (square pixels) or ``"0.56,0.42"`` (mpp-x, mpp-y of pixels that are not square).

    Raises:
        ConfigError: not one or two positive numbers.
    """
    parts = [p.strip() for p in str(text).replace(";", ",").replace("x", ",").split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"mpp={text!r}: give µm per pixel, e.g. mpp=0.25, or mpp-x,mpp-y for pixels "
                          "that are not square, e.g. mpp=0.56,0.42")
    return values[0] if len(values) == 1 else (values[0], values[1])
