"""OpenSlide backend (the default for whole-slide formats other than the tiled SVS/TIFF the `tiles` reader takes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histomag.errors import UnreadableSlideError
from histomag.slide.base import MppOverride, Slide, SlideMetadata
from histomag.slide.props import stated_mpp_xy, stated_prop, white_composite


class OpenSlideSlide(Slide):
    """A slide opened with openslide-python (with the openslide-bin library)."""

    backend = "openslide"

    def __init__(self, path: Path, mpp_override: MppOverride | None = None) -> None:
        import openslide

        try:
            self._osr = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError, OSError) as exc:
            raise UnreadableSlideError(f"{Path(path).name}: OpenSlide cannot open it ({exc})") from None
        props = dict(self._osr.properties)
        mx, my = stated_mpp_xy(props, "openslide.mpp-x", "openslide.mpp-y")
        meta = SlideMetadata(
            level_dimensions=tuple(tuple(d) for d in self._osr.level_dimensions),
            level_downsamples=tuple(float(d) for d in self._osr.level_downsamples),
            mpp_x=mx,
            mpp_y=my,
            objective_power=stated_prop(props, "openslide.objective-power"),
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
