"""OpenSlide backend (the default for whole-slide formats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histomag.errors import UnreadableSlideError
from histomag.slide.base import Slide, SlideMetadata
from histomag.slide.props import float_prop, mpp_from_tiff_tags, white_composite


class OpenSlideSlide(Slide):
    """A slide opened with openslide-python (with the openslide-bin library)."""

    backend = "openslide"

    def __init__(self, path: Path, mpp_override: float | None = None) -> None:
        import openslide

        try:
            self._osr = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError, OSError) as exc:
            raise UnreadableSlideError(f"{Path(path).name}: OpenSlide cannot open it ({exc})") from None
        props = dict(self._osr.properties)
        mx, my = float_prop(props, "openslide.mpp-x"), float_prop(props, "openslide.mpp-y")
        mpp = (mx + my) / 2 if mx and my else (mx or my or mpp_from_tiff_tags(props, "tiff."))
        meta = SlideMetadata(
            level_dimensions=tuple(tuple(d) for d in self._osr.level_dimensions),
            level_downsamples=tuple(float(d) for d in self._osr.level_downsamples),
            mpp=mpp,
            objective_power=float_prop(props, "openslide.objective-power"),
            vendor=props.get("openslide.vendor", "unknown"),
            properties=props,
        )
        super().__init__(path, meta, mpp_override)

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        import openslide

        try:
            region = self._osr.read_region((x, y), level, (width, height))
        except openslide.OpenSlideError as exc:
            raise UnreadableSlideError(
                f"{self.path.name}: read failed at level {level} ({exc}); the file may be truncated or corrupt"
            ) from None
        return white_composite(region)

    def close(self) -> None:
        self._osr.close()
