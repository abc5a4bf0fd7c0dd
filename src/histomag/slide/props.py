"""Small helpers shared by the slide backends: property parsing and RGBA → RGB."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

PLAUSIBLE_MPP = (0.05, 20.0)


def float_prop(props: Mapping[str, Any], key: str) -> float | None:
    """A positive finite float property, or None."""
    value = props.get(key)
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def mpp_from_tiff_tags(props: Mapping[str, Any], prefix: str = "tiff.") -> float | None:
    """µm/px from TIFF XResolution + ResolutionUnit when plausible (72-dpi defaults are ignored)."""
    xres = float_prop(props, prefix + "XResolution")
    unit = str(props.get(prefix + "ResolutionUnit", "")).lower()
    if not xres:
        return None
    if unit in ("centimeter", "3", "cm"):
        mpp = 1e4 / xres
    elif unit in ("inch", "2"):
        mpp = 25400.0 / xres
    else:
        return None
    return mpp if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else None


def white_composite(region: Any) -> np.ndarray:
    """RGB uint8 from a PIL image or array; transparent pixels (outside the scan) become white."""
    arr = np.asarray(region)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2).astype(np.uint8)
    if arr.shape[2] == 4:
        rgb = arr[..., :3].astype(np.float32)
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        # OpenSlide returns premultiplied-free RGBA: blend with white by alpha
        return np.clip(rgb * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3]).astype(np.uint8, copy=False)
