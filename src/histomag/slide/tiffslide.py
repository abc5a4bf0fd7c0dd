"""TiffSlide backend: used when OpenSlide cannot open a TIFF-based file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histomag.errors import UnreadableSlideError
from histomag.slide.base import MppOverride, Slide, SlideMetadata
from histomag.slide.props import stated_mpp_xy, stated_prop, white_composite


class TiffSlideSlide(Slide):
    """A slide opened with tiffslide (tifffile + imagecodecs)."""

    backend = "tiffslide"

    def __init__(self, path: Path, mpp_override: MppOverride | None = None) -> None:
        import tiffslide

        try:
            self._ts = tiffslide.TiffSlide(str(path))
            props = {k: v for k, v in dict(self._ts.properties).items()}
            dims = tuple(tuple(int(v) for v in d) for d in self._ts.level_dimensions)
            downs = tuple(float(d) for d in self._ts.level_downsamples)
        except Exception as exc:  # tiffslide raises many types (TiffFileError, ValueError, KeyError, ...)
            raise UnreadableSlideError(f"{Path(path).name}: TiffSlide cannot open it ({_one_line(exc)})") from None
        mx, my = stated_mpp_xy(props, "tiffslide.mpp-x", "tiffslide.mpp-y")
        meta = SlideMetadata(
            level_dimensions=dims,
            level_downsamples=downs,
            mpp_x=mx,
            mpp_y=my,
            objective_power=stated_prop(props, "tiffslide.objective-power"),
            vendor=str(props.get("tiffslide.vendor") or "generic-tiff"),
            properties={k: str(v) for k, v in props.items() if v is not None},
        )
        super().__init__(path, meta, mpp_override)

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        try:
            region = self._ts.read_region((x, y), level, (width, height), as_array=True)
        except Exception as exc:
            raise UnreadableSlideError(
                f"{self.path.name}: read failed at level {level} ({_one_line(exc)}); "
                "the file may be truncated or corrupt"
            ) from None
        return white_composite(region)

    def close(self) -> None:
        self._ts.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
