"""TiffSlide backend: used when OpenSlide cannot open a TIFF-based file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from histomag.errors import DecoderLimitError, UnreadableSlideError
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
        damage = _levels_problem(self._ts, os.path.getsize(path))
        if damage:
            self._ts.close()
            raise DecoderLimitError(f"{Path(path).name}: {damage}; the file is truncated or corrupt: copy or export "
                                    "the slide again")
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


def _levels_problem(ts: Any, file_size: int) -> str:
    """:func:`tile_table_problem` over the pyramid levels of a TiffSlide handle ('' for files it does not apply to)."""
    tif = getattr(ts, "ts_tifffile", None)
    if tif is None or getattr(tif, "is_ndpi", False):  # NDPI's tables are rebuilt by tifffile; OpenSlide checks them
        return ""
    try:
        pages = [level.pages[0] for level in tif.series[0].levels]
    except (AttributeError, IndexError, TypeError, ValueError):
        return ""
    return tile_table_problem(pages, file_size)


def tile_table_problem(pages: list[Any], file_size: int) -> str:
    """What is wrong with the levels' tile (or strip) tables, checked before any tile is read ('' if nothing).

    A level must list one offset and one byte count per tile (or strip) its stated size needs, and
    every one must lie inside the file: a header that claims more pixels than the tables cover
    (missing tile offsets) or tiles past the end of the file (a truncated copy) is refused here, in
    one line, rather than failing on the first read that reaches them. This costs a pass over the
    offsets (about 50 ms for the 611,524 tiles of a 200,000 px square slide) and puts no limit on the slide's size.
    """
    for i, page in enumerate(pages):
        try:
            problem = _page_problem(i, page, file_size)
        except (AttributeError, TypeError, ValueError):  # a page kind without plain tables (virtual frames, ...)
            continue
        if problem:
            return problem
    return ""


def _page_problem(i: int, page: Any, file_size: int) -> str:
    """One level's tables against its stated size and the file's ('' if they agree)."""
    w, h = int(page.imagewidth), int(page.imagelength)
    if getattr(page, "is_tiled", False):
        tw, th = int(page.tilewidth), int(page.tilelength)
        if tw <= 0 or th <= 0:
            return f"level {i} states {tw} x {th} px tiles"
        expected = -(-w // tw) * -(-h // th) * max(int(getattr(page, "tiledepth", 1) or 1), 1)
        noun, unit = "tiles", f"tiles of {tw} x {th} px"
    else:
        rows = int(page.rowsperstrip or h) or h
        expected, noun, unit = -(-h // max(rows, 1)), "strips", f"strips of {rows} rows"
    if int(page.planarconfig) == 2:
        expected *= int(page.samplesperpixel)
    offsets, counts = page.dataoffsets, page.databytecounts
    if len(offsets) != expected or len(counts) != expected:
        return (f"level {i} claims {w:,} x {h:,} px, {expected:,} {unit}, but its tables list "
                f"{min(len(offsets), len(counts)):,}")
    try:
        ends = np.asarray(offsets, np.uint64) + np.asarray(counts, np.uint64)
    except OverflowError:  # a negative entry: the tables are damaged
        return f"level {i}: its {noun}' offsets or byte counts hold negative values"
    past = int(np.count_nonzero(ends > file_size))
    if past:
        return (f"level {i}: {past:,} of its {expected:,} {noun} lie past the end of the file ({file_size:,} bytes)")
    return ""
