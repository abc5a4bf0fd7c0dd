"""Small helpers shared by the slide backends: property parsing and RGBA → RGB."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np


def stated_prop(props: Mapping[str, Any], key: str) -> float | None:
    """A finite float property as stated (0 and negatives too, for the plausibility check), or None."""
    value = props.get(key)
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def float_prop(props: Mapping[str, Any], key: str) -> float | None:
    """A positive finite float property, or None."""
    out = stated_prop(props, key)
    return out if out is not None and out > 0 else None


def mpp_from_tiff_tags(props: Mapping[str, Any], prefix: str = "tiff.") -> tuple[float | None, float | None]:
    """(mpp_x, mpp_y) in µm from TIFF X/YResolution + ResolutionUnit, as stated (None where absent).

    Implausible values (a default 72 dpi is 352.8 µm/px) are returned as they are: the slide
    reports them and does not use them (see :class:`histomag.slide.base.Slide`).
    """
    unit = str(props.get(prefix + "ResolutionUnit", "")).lower()
    if unit in ("centimeter", "3", "cm"):
        microns = 1e4
    elif unit in ("inch", "2"):
        microns = 25400.0
    else:
        return None, None
    xres, yres = float_prop(props, prefix + "XResolution"), float_prop(props, prefix + "YResolution")
    return (microns / xres if xres else None), (microns / yres if yres else None)


#: µm per OME length unit (OME-XML ``PhysicalSizeXUnit``; µm when absent)
_OME_UNITS = {"µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "pm": 1e-6, "Å": 1e-4,
              "mm": 1e3, "cm": 1e4, "m": 1e6}


def mpp_from_ome_xml(description: str | None) -> tuple[float | None, float | None]:
    """(mpp_x, mpp_y) in µm from the first ``Pixels`` element of OME-XML, as stated; (None, None) otherwise."""
    if not description or "<OME" not in description:
        return None, None
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(description)
    except (ElementTree.ParseError, ValueError):
        return None, None
    for el in root.iter():
        if str(el.tag).rsplit("}", 1)[-1] != "Pixels":
            continue
        out: list[float | None] = []
        for axis in "XY":
            value = stated_prop(el.attrib, f"PhysicalSize{axis}")
            scale = _OME_UNITS.get(el.attrib.get(f"PhysicalSize{axis}Unit", "µm").strip())
            out.append(value * scale if value is not None and scale is not None else None)
        return out[0], out[1]
    return None, None


def stated_mpp_xy(props: Mapping[str, Any], key_x: str, key_y: str,
                  tiff_prefix: str = "tiff.") -> tuple[float | None, float | None]:
    """(mpp_x, mpp_y) as the file states them: OME-XML, else the reader's mpp properties, else TIFF tags.

    OME-XML (in the ImageDescription of an OME-TIFF) comes first: it is the explicit physical
    statement, where the readers derive their mpp from resolution tags that image tools often
    leave at a default 72 dpi. The two axes are kept apart (never averaged): pixels that are not
    square are resampled to square at read time. Values are returned as stated, implausible ones
    too; the slide reports those and does not use them.
    """
    mx, my = mpp_from_ome_xml(str(props.get(tiff_prefix + "ImageDescription") or ""))
    if mx is None and my is None:
        mx, my = stated_prop(props, key_x), stated_prop(props, key_y)
    if mx is None and my is None:
        return mpp_from_tiff_tags(props, tiff_prefix)
    return mx, my


def white_composite(region: Any) -> np.ndarray:
    """RGB uint8 from a PIL image or array; transparent pixels (outside the scan) become white."""
    if getattr(region, "mode", None) == "RGBA" and region.getchannel("A").getextrema()[0] == 255:
        return np.asarray(region.convert("RGB"))  # opaque PIL region: PIL drops alpha in C, one copy
    arr = np.asarray(region)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2).astype(np.uint8)
    if arr.shape[2] == 4:
        alpha = arr[..., 3]
        if alpha.min() == 255:  # inside the scan (nearly every read): no blend, no float copy
            return np.ascontiguousarray(arr[..., :3])
        # OpenSlide returns non-premultiplied RGBA: blend with white by alpha, in integers
        # (round(rgb * a / 255 + 255 - a) exactly: the numerator + 127 never lands on a multiple of 255)
        a = alpha[..., None].astype(np.uint16)
        out = (arr[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
        return out.astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3]).astype(np.uint8, copy=False)
