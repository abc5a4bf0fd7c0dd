"""The slide interface: a small protocol every backend fills in, and resolution-aware reads on top.

A backend implements only :meth:`Slide._read_level` (an RGB region at a pyramid level) and the
metadata attributes. Everything public takes a magnification or an mpp, never a level index.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from histomag.errors import ConfigError, MissingResolutionError, UpsampleError
from histomag.resolution import DEFAULT_POWER_MPP, DEFAULT_REL_TOL, Resolution

log = logging.getLogger(__name__)

MppSource = Literal["override", "metadata-mpp", "metadata-objective-power", "missing"]

#: resampling used for every downsample: area averaging (exact for integer factors).
RESAMPLE = Image.Resampling.BOX


@dataclass(frozen=True)
class SlideMetadata:
    """What a backend read from the file, before any override."""

    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None = None
    objective_power: float | None = None
    vendor: str = "unknown"
    properties: dict[str, str] = field(default_factory=dict)


class Slide(ABC):
    """A slide or image read at true physical resolution.

    Resolution precedence: explicit override > metadata mpp > metadata objective power > missing.
    With ``mpp_source == "missing"`` the slide still opens (``info`` works), but every read at a
    magnification raises :class:`MissingResolutionError` naming the override option.
    """

    backend: str = "base"

    def __init__(self, path: Path, meta: SlideMetadata, mpp_override: float | None = None,
                 rel_tol: float = DEFAULT_REL_TOL) -> None:
        self.path = Path(path)
        self.meta = meta
        self.rel_tol = rel_tol
        self.slide_id = slide_id_from_path(self.path)
        self.vendor = meta.vendor
        self.objective_power = meta.objective_power
        self.mpp_source: MppSource
        if mpp_override is not None:
            if not (math.isfinite(mpp_override) and mpp_override > 0):
                raise ConfigError(f"--mpp {mpp_override!r} is not a positive number: give e.g. --mpp 0.25")
            self.mpp, self.mpp_source = float(mpp_override), "override"
        elif meta.mpp is not None:
            self.mpp, self.mpp_source = float(meta.mpp), "metadata-mpp"
        elif meta.objective_power is not None:
            self.mpp, self.mpp_source = DEFAULT_POWER_MPP / float(meta.objective_power), "metadata-objective-power"
        else:
            self.mpp, self.mpp_source = None, "missing"

    # ----- metadata -------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        return self.meta.level_dimensions[0]

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self.meta.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self.meta.level_downsamples

    @property
    def power_mpp(self) -> float:
        """Magnification x mpp: the slide's own ratio when it states mpp and power, else 10."""
        if self.mpp_source == "metadata-mpp" and self.objective_power and self.meta.mpp:
            ratio = self.objective_power * self.meta.mpp
            # keep the slide's ratio only when it is a plausible restatement of the convention
            if 0.8 * DEFAULT_POWER_MPP <= ratio <= 1.25 * DEFAULT_POWER_MPP:
                return ratio
        return DEFAULT_POWER_MPP

    @property
    def resolution(self) -> Resolution:
        """Level-0 resolution; raises :class:`MissingResolutionError` when unknown."""
        if self.mpp is None:
            raise MissingResolutionError(
                f"{self.path.name}: no resolution in its metadata (no mpp, no objective power); "
                "give it with --mpp MICRONS_PER_PIXEL (e.g. --mpp 0.25 for 40x)"
            )
        return Resolution(self.mpp, self.power_mpp)

    @property
    def magnification(self) -> float:
        """Level-0 (scan) magnification."""
        return self.resolution.magnification

    def level_resolutions(self) -> list[Resolution]:
        base = self.resolution
        return [Resolution(base.mpp * d, base.power_mpp) for d in self.level_downsamples]

    def to_resolution(self, magnification: float | None = None, mpp: float | None = None) -> Resolution:
        """The requested resolution from exactly one of ``magnification`` or ``mpp``."""
        if (magnification is None) == (mpp is None):
            raise ConfigError("give exactly one of magnification or mpp")
        if mpp is not None:
            return Resolution(float(mpp), self.power_mpp)
        return Resolution.from_magnification(float(magnification), self.power_mpp)  # type: ignore[arg-type]

    def info(self) -> dict:
        """A JSON-serialisable summary (what ``histomag info`` prints)."""
        mpps = [self.mpp * d if self.mpp else None for d in self.level_downsamples]
        mag = self.power_mpp / self.mpp if self.mpp else None
        return {
            "path": str(self.path),
            "slide_id": self.slide_id,
            "backend": self.backend,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "mpp": self.mpp,
            "objective_power": self.objective_power,
            "magnification": round(mag, 3) if mag else None,
            "mpp_source": self.mpp_source,
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

        Callers only ask for regions inside the level's bounds.
        """

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release file handles."""

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_level_padded(self, lx: int, ly: int, level: int, width: int, height: int) -> np.ndarray:
        """Read a region given in level coordinates; parts outside the slide are white."""
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

    def best_level(self, target: Resolution) -> int:
        """The coarsest level whose resolution is at or finer than ``target`` (within tolerance)."""
        base = self.resolution
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if base.mpp * ds <= target.mpp * (1.0 + self.rel_tol) and ds >= self.level_downsamples[best]:
                best = i
        return best

    def read_rect(self, left: float, top: float, width: float, height: float,
                  out_size: tuple[int, int], allow_upsample: bool = False) -> np.ndarray:
        """Read a level-0 rectangle resampled to ``out_size`` (w, h) px, from the best level.

        The rectangle may have fractional coordinates; the output covers exactly that tissue.
        """
        out_w, out_h = int(out_size[0]), int(out_size[1])
        if out_w <= 0 or out_h <= 0 or width <= 0 or height <= 0:
            raise ConfigError(f"empty read {width}x{height} -> {out_w}x{out_h}: sizes must be positive")
        base = self.resolution
        target = Resolution(base.mpp * max(width / out_w, height / out_h), base.power_mpp)
        if target.mpp < base.mpp * (1.0 - self.rel_tol) and not allow_upsample:
            raise UpsampleError(
                f"{self.path.name}: {target} is above the scan resolution {base}; "
                "ask for a lower magnification or pass --allow-upsample"
            )
        level = self.best_level(target)
        ds = self.level_downsamples[level]
        # integer-aligned enclosing region at that level
        lx0, ly0 = math.floor(left / ds), math.floor(top / ds)
        lx1, ly1 = math.ceil((left + width) / ds), math.ceil((top + height) / ds)
        region = self._read_level_padded(lx0, ly0, level, max(1, lx1 - lx0), max(1, ly1 - ly0))
        box = (left / ds - lx0, top / ds - ly0, (left + width) / ds - lx0, (top + height) / ds - ly0)
        rw, rh = region.shape[1], region.shape[0]
        if (rw, rh) == (out_w, out_h) and all(abs(b - r) < 1e-6 for b, r in zip(box, (0, 0, rw, rh))):
            return region
        if math.isclose(box[2] - box[0], out_w, rel_tol=1e-6) and math.isclose(box[3] - box[1], out_h, rel_tol=1e-6) \
                and all(abs(b - round(b)) < 1e-6 for b in box):
            x0, y0 = int(round(box[0])), int(round(box[1]))
            return np.ascontiguousarray(region[y0:y0 + out_h, x0:x0 + out_w])
        resample = RESAMPLE if (box[2] - box[0]) >= out_w else Image.Resampling.LANCZOS
        log.debug("%s: level %d (downsample %.3g) resampled %s -> %dx%d", self.path.name, level, ds, box, out_w, out_h)
        img = Image.fromarray(region).resize((out_w, out_h), resample=resample, box=box)
        return np.asarray(img)

    def read(self, center: tuple[float, float], size: int | tuple[int, int], *,
             magnification: float | None = None, mpp: float | None = None,
             allow_upsample: bool = False) -> np.ndarray:
        """Read a field centred at ``center`` (level-0 px) at a magnification or mpp.

        Args:
            center: (x, y) of the field centre in level-0 pixels.
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
        """Level-0 pixels as scanned, whatever the resolution (used to estimate an unknown one)."""
        return self._read_level_padded(int(left), int(top), 0, int(width), int(height))

    def read_overview(self, max_side: int = 2048) -> tuple[np.ndarray, tuple[float, float]]:
        """The whole slide from its coarsest level, at most ``max_side`` px; returns (rgb, downsample).

        Needs no resolution, so it works on slides whose mpp is unknown.
        """
        level = len(self.level_dimensions) - 1
        lw, lh = self.level_dimensions[level]
        rgb = self._read_level_padded(0, 0, level, lw, lh)
        if max(lw, lh) > max_side:
            f = max_side / max(lw, lh)
            rgb = np.asarray(Image.fromarray(rgb).resize((max(1, round(lw * f)), max(1, round(lh * f))), RESAMPLE))
        W, H = self.dimensions
        return rgb, (W / rgb.shape[1], H / rgb.shape[0])

    def read_whole(self, mpp: float) -> np.ndarray:
        """The whole slide at ``mpp`` (or the scan resolution if that is coarser), e.g. for tissue masks."""
        W, H = self.dimensions
        scale = max(mpp / self.resolution.mpp, 1.0)
        out = (max(1, round(W / scale)), max(1, round(H / scale)))
        return self.read_rect(0, 0, W, H, out)


def slide_id_from_path(path: Path) -> str:
    """File name without the slide extensions (``a.ome.tiff`` -> ``a``)."""
    name = Path(path).name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem
