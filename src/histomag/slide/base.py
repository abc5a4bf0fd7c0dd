"""The slide interface: a small protocol every backend fills in, and resolution-aware reads on top.

A backend implements only :meth:`Slide._read_level` (an RGB region at a pyramid level, in the
file's own pixels) and the metadata attributes. Everything public takes a magnification or an mpp,
never a level index, and works in *square* pixels: where the file's pixels are wider than tall (or
taller than wide) by more than 1 %, the slide presents itself at the coarser of the two sizes and
every read area-averages the finer axis down to it (never an upsample, never an average of the
two sizes, which would distort every field). Backends get this for free; they state ``mpp_x`` and
``mpp_y`` and read file pixels. Stated resolutions outside what microscopes produce (a TIFF's
default 72 dpi is 352.8 µm/px) are reported but not used.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import numpy as np
from PIL import Image

from histomag.errors import ConfigError, MissingResolutionError, UpsampleError
from histomag.resolution import (
    DEFAULT_POWER_MPP,
    DEFAULT_REL_TOL,
    Resolution,
    implausible_mpp_message,
    implausible_power_message,
    is_anisotropic,
    is_plausible_mpp,
    is_plausible_objective_power,
)

log = logging.getLogger(__name__)

#: where a slide's resolution came from; ``implausible-metadata``: the file states one that no
#: microscope produces (kept in :attr:`Slide.metadata_mpp` for display) and nothing usable is left,
#: so the slide is read as if its resolution were missing.
MppSource = Literal["override", "metadata-mpp", "metadata-objective-power", "implausible-metadata", "missing"]

#: an mpp override: one value for square pixels, or ``(mpp_x, mpp_y)`` for pixels that are not square
MppOverride = Union[float, tuple[float, float]]

#: resampling used for every downsample: area averaging (exact for integer factors).
RESAMPLE = Image.Resampling.BOX


@dataclass(frozen=True)
class SlideMetadata:
    """What a backend read from the file, before any override or plausibility check.

    Attributes:
        level_dimensions: (width, height) of each pyramid level, in the file's pixels.
        level_downsamples: level-0 pixels per level pixel.
        mpp: the stated µm per pixel when the file gives one value for both axes.
        objective_power: the stated objective power.
        vendor: format or scanner vendor.
        properties: the backend's raw properties.
        mpp_x: stated pixel width in µm, when the file states the two axes apart.
        mpp_y: stated pixel height in µm (either one alone stands for both).
    """

    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None = None
    objective_power: float | None = None
    vendor: str = "unknown"
    properties: dict[str, str] = field(default_factory=dict)
    mpp_x: float | None = None
    mpp_y: float | None = None

    @property
    def stated_mpp_xy(self) -> tuple[float, float] | None:
        """(mpp_x, mpp_y) as the file states them (``mpp`` for both when it gives one), or None."""
        x = self.mpp_x if self.mpp_x is not None else self.mpp
        y = self.mpp_y if self.mpp_y is not None else self.mpp
        x, y = x if x is not None else y, y if y is not None else x
        return (float(x), float(y)) if x is not None and y is not None else None


def mpp_override_xy(value: MppOverride) -> tuple[float, float]:
    """``(mpp_x, mpp_y)`` of an override (one number or a pair), validated.

    Raises:
        ConfigError: not a positive finite number, or a pair that is not two of them.
    """
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ConfigError(f"mpp override {value!r} must be one number or a pair (mpp_x, mpp_y); "
                              "give e.g. 0.25 or (0.56, 0.42)")
        pair = (value[0], value[1])
    else:
        pair = (value, value)
    out = []
    for v in pair:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = float("nan")
        if not (math.isfinite(f) and f > 0):
            raise ConfigError(f"mpp={v!r} is not a positive number: give e.g. mpp=0.25")
        out.append(f)
    return out[0], out[1]


class Slide(ABC):
    """A slide or image read at true physical resolution, in square pixels.

    Resolution precedence: explicit override > metadata mpp > metadata objective power > missing.
    A stated mpp or objective power outside :data:`histomag.resolution.PLAUSIBLE_MPP` /
    :data:`~histomag.resolution.PLAUSIBLE_OBJECTIVE_POWER` is dropped (with a line in
    :attr:`warnings`) and precedence goes on with what is left; when nothing is left,
    ``mpp_source`` is ``implausible-metadata``. Without a usable resolution the slide still opens
    (``info`` works), but every read at a magnification raises :class:`MissingResolutionError`.

    Coordinates: every public read takes level-0 coordinates in square pixels of :attr:`mpp` µm
    (:attr:`dimensions` is the slide's size in them). For square pixels (mpp-x and mpp-y within
    1 %) they are the file's level-0 pixels; otherwise the finer axis is scaled by
    :attr:`pixel_scale`. :attr:`level_dimensions` and :meth:`_read_level` stay in file pixels.

    Attributes:
        mpp: µm per (square) pixel at level 0, the coarser of ``mpp_x`` and ``mpp_y``; None when unknown.
        mpp_x, mpp_y: width and height of a file pixel in µm (None when unknown).
        mpp_source: see :data:`MppSource`.
        metadata_mpp: the mpp the file states, (x, y), even when implausible; None when it states none.
        metadata_objective_power: the objective power the file states, even when implausible.
        objective_power: the stated objective power when plausible, else None.
        warnings: one line per stated value that was not used (shown by ``info``).
    """

    backend: str = "base"

    def __init__(self, path: Path, meta: SlideMetadata, mpp_override: MppOverride | None = None,
                 rel_tol: float = DEFAULT_REL_TOL) -> None:
        self.path = Path(path)
        self.meta = meta
        self.rel_tol = rel_tol
        self.slide_id = slide_id_from_path(self.path)
        self.vendor = meta.vendor
        self.metadata_mpp = meta.stated_mpp_xy
        self.metadata_objective_power = meta.objective_power
        power = meta.objective_power
        self.objective_power = power if power is not None and is_plausible_objective_power(power) else None
        stated = self.metadata_mpp
        bad_mpp = next((v for v in stated if not is_plausible_mpp(v)), None) if stated else None
        self.warnings: list[str] = []
        self.mpp_source: MppSource
        xy: tuple[float, float] | None
        if mpp_override is not None:
            xy, self.mpp_source = mpp_override_xy(mpp_override), "override"
        else:
            if bad_mpp is not None:
                self.warnings.append(implausible_mpp_message(bad_mpp))
            if power is not None and self.objective_power is None:
                self.warnings.append(implausible_power_message(power))
            if stated is not None and bad_mpp is None:
                xy, self.mpp_source = stated, "metadata-mpp"
            elif self.objective_power is not None:
                mpp = DEFAULT_POWER_MPP / float(self.objective_power)
                xy, self.mpp_source = (mpp, mpp), "metadata-objective-power"
            elif self.warnings:
                xy, self.mpp_source = None, "implausible-metadata"
            else:
                xy, self.mpp_source = None, "missing"
        self.mpp_x: float | None = xy[0] if xy else None
        self.mpp_y: float | None = xy[1] if xy else None
        self.mpp: float | None = max(xy) if xy else None
        for line in self.warnings:
            log.info("%s: %s; not used", self.path.name, line)

    # ----- metadata -------------------------------------------------------------------------
    @property
    def anisotropic(self) -> bool:
        """Whether the file's pixels are not square (mpp-x and mpp-y more than 1 % apart)."""
        return self.mpp_x is not None and self.mpp_y is not None and is_anisotropic(self.mpp_x, self.mpp_y)

    @property
    def pixel_scale(self) -> tuple[float, float]:
        """Square pixels per file pixel along x and y: (1, 1) unless :attr:`anisotropic` (then ≤ 1)."""
        if not self.anisotropic:
            return 1.0, 1.0
        return self.mpp_x / self.mpp, self.mpp_y / self.mpp  # type: ignore[operator]

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in square pixels: the coordinate space of every public read."""
        w, h = self.meta.level_dimensions[0]
        sx, sy = self.pixel_scale
        if (sx, sy) == (1.0, 1.0):
            return w, h
        return max(1, round(w * sx)), max(1, round(h * sy))

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each pyramid level as stored, in the file's pixels."""
        return self.meta.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self.meta.level_downsamples

    @property
    def power_mpp(self) -> float:
        """Magnification x mpp: the slide's own ratio when it states mpp and power, else 10."""
        if self.mpp_source == "metadata-mpp" and self.objective_power and self.mpp:
            ratio = self.objective_power * self.mpp
            # keep the slide's ratio only when it is a plausible restatement of the convention
            if 0.8 * DEFAULT_POWER_MPP <= ratio <= 1.25 * DEFAULT_POWER_MPP:
                return ratio
        return DEFAULT_POWER_MPP

    @property
    def resolution(self) -> Resolution:
        """Level-0 resolution; raises :class:`MissingResolutionError` when unknown (or implausible)."""
        if self.mpp is None:
            if self.mpp_source == "implausible-metadata":
                raise MissingResolutionError(
                    f"{self.path.name}: no usable resolution: {', and '.join(self.warnings)}; give it with "
                    "mpp=MICRONS_PER_PIXEL (e.g. mpp=0.25 for 40x) or estimate it from the pixels (mpp='estimate')"
                )
            raise MissingResolutionError(
                f"{self.path.name}: no resolution in its metadata (no mpp, no objective power); "
                "give it with mpp=MICRONS_PER_PIXEL (e.g. mpp=0.25 for 40x)"
            )
        return Resolution(self.mpp, self.power_mpp)

    @property
    def magnification(self) -> float:
        """Level-0 (scan) magnification."""
        return self.resolution.magnification

    def level_resolutions(self) -> list[Resolution]:
        """Resolution of a (square-pixel) read from each pyramid level."""
        base = self.resolution
        return [Resolution(base.mpp * d, base.power_mpp) for d in self.level_downsamples]

    def to_resolution(self, magnification: float | None = None, mpp: float | None = None) -> Resolution:
        """The requested resolution from exactly one of ``magnification`` or ``mpp``."""
        if (magnification is None) == (mpp is None):
            raise ConfigError("give exactly one of magnification or mpp")
        if mpp is not None:
            return Resolution(float(mpp), self.power_mpp)
        return Resolution.from_magnification(float(magnification), self.power_mpp)  # type: ignore[arg-type]

    def check_not_upsample(self, target: Resolution, allow_upsample: bool = False) -> None:
        """Refuse a resolution finer than the scan (:class:`UpsampleError`) unless ``allow_upsample``.

        Raises:
            MissingResolutionError: the slide has no usable resolution.
            UpsampleError: ``target`` is above the scan resolution (beyond :attr:`rel_tol`).
        """
        base = self.resolution
        if target.mpp < base.mpp * (1.0 - self.rel_tol) and not allow_upsample:
            raise UpsampleError(
                f"{self.path.name}: {target} is above the scan resolution {base}; "
                "ask for a lower magnification or pass allow_upsample=True"
            )

    def info(self) -> dict:
        """A JSON-serialisable summary (what ``histomag info`` prints).

        ``dimensions`` are in square pixels (as every read); ``file_dimensions`` and the levels'
        ``dimensions`` are the file's own pixels. ``metadata_mpp`` is what the file states (even
        when implausible), ``warnings`` says which stated values were not used.
        """
        mpps = [self.mpp * d if self.mpp else None for d in self.level_downsamples]
        mag = self.power_mpp / self.mpp if self.mpp else None
        stated = self.metadata_mpp
        return {
            "path": str(self.path),
            "slide_id": self.slide_id,
            "backend": self.backend,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "file_dimensions": list(self.level_dimensions[0]),
            "mpp": self.mpp,
            "mpp_x": self.mpp_x,
            "mpp_y": self.mpp_y,
            "square_pixels": not self.anisotropic,
            "objective_power": self.objective_power,
            "magnification": round(mag, 3) if mag else None,
            "mpp_source": self.mpp_source,
            "metadata_mpp": (None if stated is None else stated[0] if stated[0] == stated[1] else list(stated)),
            "metadata_objective_power": self.metadata_objective_power,
            "warnings": list(self.warnings),
            "levels": [
                {"level": i, "dimensions": list(dim), "downsample": round(ds, 4),
                 "mpp": round(m, 5) if m else None,
                 "magnification": round(self.power_mpp / m, 3) if m else None}
                for i, (dim, ds, m) in enumerate(zip(self.level_dimensions, self.level_downsamples, mpps))
            ],
        }

    # ----- reading --------------------------------------------------------------------------
    @abstractmethod
    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 array (height, width, 3) at ``level``; (x, y) is the top-left in level-0 px.

        Coordinates and sizes are the file's own pixels. Callers only ask for regions inside the
        level's bounds.
        """

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release file handles."""

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_level_padded(self, lx: int, ly: int, level: int, width: int, height: int) -> np.ndarray:
        """Read a region given in level coordinates (file pixels); parts outside the slide are white."""
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        cx0, cy0 = max(lx, 0), max(ly, 0)
        cx1, cy1 = min(lx + width, lw), min(ly + height, lh)
        if cx0 == lx and cy0 == ly and cx1 == lx + width and cy1 == ly + height:
            return self._read_level(int(round(lx * ds)), int(round(ly * ds)), level, width, height)
        out = np.full((height, width, 3), 255, np.uint8)
        if cx1 > cx0 and cy1 > cy0:
            part = self._read_level(int(round(cx0 * ds)), int(round(cy0 * ds)), level, cx1 - cx0, cy1 - cy0)
            out[cy0 - ly:cy1 - ly, cx0 - lx:cx1 - lx] = part
        return out

    def _decode_factor(self, level: int, scale: float) -> int:
        """By how much coarser than ``level`` this backend can decode directly (1: it cannot).

        ``scale`` is the level's pixels per output pixel of the read. Backends that can (JPEG's
        DCT-domain scaling) return 2, 4 or 8 and implement :meth:`_read_scaled_padded`.
        """
        return 1

    def _read_scaled_padded(self, lx: int, ly: int, level: int, width: int, height: int, factor: int) -> np.ndarray:
        """A region of ``level`` decoded ``factor`` times coarser; coordinates in those coarser pixels."""
        raise NotImplementedError

    def best_level(self, target: Resolution) -> int:
        """The coarsest level whose resolution is at or finer than ``target`` (within tolerance)."""
        base = self.resolution
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if base.mpp * ds <= target.mpp * (1.0 + self.rel_tol) and ds >= self.level_downsamples[best]:
                best = i
        return best

    def _read_square(self, left: float, top: float, width: float, height: float, level: int,
                     out_w: int, out_h: int) -> np.ndarray:
        """A square-pixel level-0 rectangle from ``level``, resampled to ``out_w`` x ``out_h`` px.

        The one place where square-pixel coordinates become file pixels: the rectangle is scaled by
        :attr:`pixel_scale` and read from the enclosing whole pixels of ``level``; exact crops are
        returned as they are, everything else is area-averaged (Lanczos only when upsampling).
        """
        sx, sy = self.pixel_scale
        ds = self.level_downsamples[level]
        # a backend that decodes coarser than the level directly (JPEG's DCT scaling) reads a virtual level
        factor = self._decode_factor(level, min(width / sx / ds / out_w, height / sy / ds / out_h))
        lw, lh = self.level_dimensions[level]
        while factor > 1 and not (_on_grid(left / sx / ds, factor) and _on_grid(top / sy / ds, factor)
                                  and (left + width) / sx / ds <= lw // factor * factor + 1e-6
                                  and (top + height) / sy / ds <= lh // factor * factor + 1e-6):
            # the coarser grid must start where the read starts (or it shifts the image) and must not
            # need the level's last, partial block of pixels
            factor //= 2
        ds *= factor
        fl, ft, fr, fb = left / sx / ds, top / sy / ds, (left + width) / sx / ds, (top + height) / sy / ds
        # integer-aligned enclosing region at that level
        lx0, ly0 = math.floor(fl), math.floor(ft)
        lx1, ly1 = math.ceil(fr), math.ceil(fb)
        w, h = max(1, lx1 - lx0), max(1, ly1 - ly0)
        region = (self._read_level_padded(lx0, ly0, level, w, h) if factor == 1
                  else self._read_scaled_padded(lx0, ly0, level, w, h, factor))
        box = (fl - lx0, ft - ly0, fr - lx0, fb - ly0)
        rw, rh = region.shape[1], region.shape[0]
        if (rw, rh) == (out_w, out_h) and all(abs(b - r) < 1e-6 for b, r in zip(box, (0, 0, rw, rh))):
            return region
        if math.isclose(box[2] - box[0], out_w, rel_tol=1e-6) and math.isclose(box[3] - box[1], out_h, rel_tol=1e-6) \
                and all(abs(b - round(b)) < 1e-6 for b in box):
            x0, y0 = int(round(box[0])), int(round(box[1]))
            return np.ascontiguousarray(region[y0:y0 + out_h, x0:x0 + out_w])
        down = (box[2] - box[0]) >= out_w and (box[3] - box[1]) >= out_h
        resample = RESAMPLE if down else Image.Resampling.LANCZOS
        log.debug("%s: level %d (downsample %.3g) resampled %s -> %dx%d", self.path.name, level, ds, box, out_w, out_h)
        img = Image.fromarray(region).resize((out_w, out_h), resample=resample, box=box)
        return np.asarray(img)

    def read_rect(self, left: float, top: float, width: float, height: float,
                  out_size: tuple[int, int], allow_upsample: bool = False) -> np.ndarray:
        """Read a level-0 rectangle resampled to ``out_size`` (w, h) px, from the best level.

        The rectangle is in square pixels (see :attr:`dimensions`) and may have fractional
        coordinates; the output covers exactly that tissue.
        """
        out_w, out_h = int(out_size[0]), int(out_size[1])
        if out_w <= 0 or out_h <= 0 or width <= 0 or height <= 0:
            raise ConfigError(f"empty read {width}x{height} -> {out_w}x{out_h}: sizes must be positive")
        base = self.resolution
        target = Resolution(base.mpp * max(width / out_w, height / out_h), base.power_mpp)
        self.check_not_upsample(target, allow_upsample)
        return self._read_square(left, top, width, height, self.best_level(target), out_w, out_h)

    def read(self, center: tuple[float, float], size: int | tuple[int, int], *,
             magnification: float | None = None, mpp: float | None = None,
             allow_upsample: bool = False) -> np.ndarray:
        """Read a field centred at ``center`` (level-0 px) at a magnification or mpp.

        Args:
            center: (x, y) of the field centre in level-0 (square) pixels.
            size: output size in pixels (int for square, or (w, h)).
            magnification: objective magnification, e.g. 20.
            mpp: or the resolution in µm per pixel.
            allow_upsample: permit a request finer than the scan resolution.

        Returns:
            RGB uint8 array of shape (h, w, 3).
        """
        w, h = (size, size) if isinstance(size, int) else size
        target = self.to_resolution(magnification, mpp)
        scale = target.mpp / self.resolution.mpp  # level-0 px per output px
        fw, fh = w * scale, h * scale
        # snap the field to whole level-0 pixels: a scan-resolution read is then an exact crop
        left, top = round(center[0] - fw / 2), round(center[1] - fh / 2)
        return self.read_rect(left, top, fw, fh, (w, h), allow_upsample)

    def read_native(self, left: int, top: int, width: int, height: int) -> np.ndarray:
        """Level-0 pixels at the scan resolution, whatever it is (used to estimate an unknown one).

        Square pixels are returned as stored, untouched. Pixels that are not square (a stated
        mpp-x and mpp-y more than 1 % apart) come squared like every read: the finer axis
        area-averaged to the coarser, so a magnification model sees square pixels. The
        rectangle is in square pixels (see :attr:`dimensions`); parts outside the slide are white.
        """
        if not self.anisotropic:
            return self._read_level_padded(int(left), int(top), 0, int(width), int(height))
        return self._read_square(float(left), float(top), float(width), float(height), 0, int(width), int(height))

    def read_overview(self, max_side: int = 2048) -> tuple[np.ndarray, tuple[float, float]]:
        """The whole slide from its coarsest level, at most ``max_side`` px; returns (rgb, downsample).

        Square pixels (as every read); ``downsample`` is level-0 (square) pixels per overview pixel.
        Needs no resolution, so it works on slides whose mpp is unknown.
        """
        level = len(self.level_dimensions) - 1
        lw, lh = self.level_dimensions[level]
        rgb = self._read_level_padded(0, 0, level, lw, lh)
        sx, sy = self.pixel_scale
        tw, th = lw * sx, lh * sy
        f = min(1.0, max_side / max(tw, th))
        size = (max(1, round(tw * f)), max(1, round(th * f)))
        if size != (lw, lh):
            rgb = np.asarray(Image.fromarray(rgb).resize(size, RESAMPLE))
        W, H = self.dimensions
        return rgb, (W / rgb.shape[1], H / rgb.shape[0])

    def read_whole(self, mpp: float) -> np.ndarray:
        """The whole slide at ``mpp`` (or the scan resolution if that is coarser), e.g. for tissue masks."""
        W, H = self.dimensions
        scale = max(mpp / self.resolution.mpp, 1.0)
        out = (max(1, round(W / scale)), max(1, round(H / scale)))
        return self.read_rect(0, 0, W, H, out)


def _on_grid(position: float, factor: int) -> bool:
    """Whether ``position`` (level pixels) is a whole multiple of ``factor``."""
    return abs(position / factor - round(position / factor)) < 1e-6


def slide_id_from_path(path: Path) -> str:
    """File name without the slide extensions (``a.ome.tiff`` -> ``a``)."""
    name = Path(path).name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem
