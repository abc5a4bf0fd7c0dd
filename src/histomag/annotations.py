"""Label masks and QuPath GeoJSON -> the share of each class in any level-0 field.

Both sources become a :class:`LabelMask`: an integer image of class ids (0 = unlabelled) that
covers the whole slide at some downsample. :meth:`LabelMask.fractions` answers "how much of this
field is tumour, how much normal?" in O(1) per class from summed-area tables, and
:func:`assign_label` turns those fractions into one label per field (or drops the field).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from histomag.errors import AnnotationError, ConfigError
from histomag.tissue import box_sums, level0_box_to_mask, summed_area_table

log = logging.getLogger(__name__)

BACKGROUND = "background"
QUPATH_FIX = "export it again from QuPath with File > Export objects as GeoJSON"
#: a fraction at or below this counts as 0 % (float noise of fractional rectangles).
ZERO_TOL = 1e-9


@dataclass(frozen=True, eq=False)
class LabelMask:
    """Class ids over the whole slide at a downsample.

    Attributes:
        labels: int array (h, w) of class ids; 0 = unlabelled / background.
        class_names: id -> name; ids in ``labels`` without a name get ``"class-<id>"``, 0 gets
            ``"background"``.
        downsample: level-0 pixels per mask pixel in x and y.
    """

    labels: np.ndarray
    class_names: dict[int, str]
    downsample: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 2 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(f"label mask must be a non-empty 2-D integer array, got {labels.dtype} {labels.shape}")
        if labels.min() < 0:
            raise ConfigError("label mask has negative class ids: use 0 for unlabelled and 1.. for classes")
        dx, dy = (float(d) for d in self.downsample)
        if not (dx > 0 and dy > 0 and math.isfinite(dx) and math.isfinite(dy)):
            raise ConfigError(f"label mask downsample {self.downsample!r} must be positive")
        names = {int(k): str(v) for k, v in self.class_names.items()}
        names.setdefault(0, BACKGROUND)
        for cid in np.unique(labels).tolist():
            names.setdefault(int(cid), f"class-{cid}")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", dict(sorted(names.items())))
        object.__setattr__(self, "downsample", (dx, dy))

    @property
    def classes(self) -> list[str]:
        """Names of the labelled classes (id 0 excluded), in id order, without repeats."""
        return list(dict.fromkeys(n for cid, n in self.class_names.items() if cid != 0))

    @cached_property
    def _tables(self) -> dict[int, np.ndarray]:
        present = set(np.unique(self.labels).tolist())
        return {cid: summed_area_table(self.labels == cid)
                for cid in self.class_names if cid != 0 and cid in present}

    def fractions(self, left: float, top: float, width: float, height: float) -> dict[str, float]:
        """Share of a level-0 rectangle covered by each named class (id 0 excluded).

        Fractional coordinates are fine; parts outside the slide count as unlabelled. Every
        class of :attr:`classes` is in the result, absent ones with 0.0.

        Args:
            left, top: top-left corner in level-0 pixels.
            width, height: size in level-0 pixels (> 0).
        """
        x0, y0, x1, y1, area = level0_box_to_mask(self.downsample, left, top, width, height)
        out = dict.fromkeys(self.classes, 0.0)
        for cid, sat in self._tables.items():
            name = self.class_names[cid]
            out[name] = min(1.0, out[name] + float(box_sums(sat, x0, y0, x1, y1)) / area)
        return out


# ----- label images -----------------------------------------------------------------------------
def _read_label_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                # for a palette image the palette indices are the class ids
                return np.asarray(img).astype(np.int32 if mode.startswith("I") else np.uint8)
            if mode in ("LA", "PA"):
                return np.asarray(img)[..., 0]
            if mode in ("RGB", "RGBA"):
                arr = np.asarray(img)[..., :3]
                if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
                    return arr[..., 0]
                raise AnnotationError(
                    f"label mask {path.name} is a colour {mode} image: save the class ids as a "
                    "single-channel (grayscale or palette) 8-bit PNG")
            if mode == "F":
                arr = np.asarray(img)
                if np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)) and arr.min() >= 0:
                    return arr.astype(np.int32)
            raise AnnotationError(
                f"label mask {path.name} has image mode {mode}: save the class ids as a "
                "single-channel 8-bit PNG")
    except AnnotationError:
        raise
    except Image.DecompressionBombError:
        raise AnnotationError(
            f"label mask {path.name} is too large to load: export it at a downsample of the slide "
            "(e.g. 16); the downsample is inferred from its size") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AnnotationError(
            f"label mask {path.name} cannot be read as an image ({reason}): "
            "export it again as an 8-bit PNG of class ids") from None


def _sidecar_names(path: Path) -> dict[int, str] | None:
    """Class names from ``<stem>.classes.json`` or ``classes.json`` next to the mask, if any."""
    for sidecar in (path.with_name(f"{path.stem}.classes.json"), path.with_name("classes.json")):
        if not sidecar.is_file():
            continue
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not an object")
            return {int(k): str(v) for k, v in data.items()}
        except (ValueError, TypeError) as exc:
            reason = str(exc).splitlines()[0]
            raise AnnotationError(
                f"{sidecar.name} next to {path.name} is not a JSON object of id -> name ({reason}): "
                'write it as {"0": "background", "1": "normal", "2": "tumor"}') from None
    return None


def _check_path(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise AnnotationError(f"{what} {p.name} does not exist: check the path ({p})")
    if not p.is_file():
        raise AnnotationError(f"{what} {p.name} is not a file: give the path of the file itself")
    return p


def load_label_mask(path: str | Path, slide_dimensions: tuple[int, int],
                    class_names: dict[int, str] | None = None, *, aspect_tol: float = 0.02,
                    slide_name: str | None = None) -> LabelMask:
    """Load an image of class ids exported at any downsample of the slide.

    Args:
        path: single-channel image (8/16-bit PNG, TIFF, ... or a palette image, whose indices are
            the ids; an RGB image is accepted only when it is gray).
        slide_dimensions: (width, height) of the slide's level 0.
        class_names: id -> name; else ``<stem>.classes.json`` or ``classes.json`` next to the
            mask (``{"0": "background", "1": "normal"}``); else ``"class-<id>"``.
        aspect_tol: allowed relative difference between the mask's and the slide's aspect ratio.
        slide_name: slide name for messages.

    Returns:
        A :class:`LabelMask` whose downsample is inferred from the sizes.
    """
    p = _check_path(path, "label mask")
    labels = _read_label_image(p)
    if labels.ndim != 2:
        raise AnnotationError(f"label mask {p.name} has shape {labels.shape}: save it as one single-channel image")
    h, w = labels.shape
    sw, sh = int(slide_dimensions[0]), int(slide_dimensions[1])
    mask_aspect, slide_aspect = w / h, sw / sh
    if abs(mask_aspect / slide_aspect - 1.0) > aspect_tol:
        slide = f"slide {slide_name}" if slide_name else "the slide"
        raise AnnotationError(
            f"label mask {p.name} is {w}x{h} (aspect {mask_aspect:.3g}) but {slide} is {sw}x{sh} "
            f"(aspect {slide_aspect:.3g}): export the mask at the slide's aspect ratio")
    names = class_names if class_names is not None else _sidecar_names(p)
    mask = LabelMask(labels, dict(names or {}), (sw / w, sh / h))
    log.info("%s: label mask %dx%d at downsample %.3g, classes %s", p.name, w, h,
             mask.downsample[0], ", ".join(mask.classes) or "none")
    return mask


# ----- GeoJSON ----------------------------------------------------------------------------------
def _class_of(feature: dict[str, Any]) -> str | None:
    """Class name of a QuPath feature: classification.name (>= 0.2), classification, name."""
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        return None
    cls = props.get("classification")
    if isinstance(cls, dict):
        name = cls.get("name")
        if name is None and isinstance(cls.get("names"), list):
            name = ": ".join(str(n) for n in cls["names"])
        if name:
            return str(name)
    elif isinstance(cls, str) and cls:
        return cls
    name = props.get("name")
    return str(name) if name else None


def _polygons(geometry: Any, found_types: Counter) -> list[list]:
    """The polygons (each a list of rings) of a geometry, counting the types seen."""
    if not isinstance(geometry, dict):
        return []
    gtype = geometry.get("type")
    found_types[str(gtype)] += 1
    coords = geometry.get("coordinates")
    if gtype == "Polygon":
        return [coords]
    if gtype == "MultiPolygon":
        return list(coords) if isinstance(coords, list) else [coords]
    if gtype == "GeometryCollection":
        return [poly for g in geometry.get("geometries") or [] for poly in _polygons(g, found_types)]
    return []


def _features(data: Any, name: str) -> list[dict[str, Any]]:
    if isinstance(data, list):
        return [f for f in data if isinstance(f, dict)]
    if isinstance(data, dict):
        if data.get("type") == "FeatureCollection" or "features" in data:
            features = data.get("features")
            if not isinstance(features, list):
                raise AnnotationError(f"{name}: its \"features\" is not a list; {QUPATH_FIX}")
            return [f for f in features if isinstance(f, dict)]
        if data.get("type") == "Feature":
            return [data]
        if "coordinates" in data or data.get("type") == "GeometryCollection":  # a bare geometry
            return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise AnnotationError(f"{name}: not a GeoJSON FeatureCollection, Feature or list of Features; {QUPATH_FIX}")


def _ring_array(ring: Any, name: str, index: int) -> np.ndarray:
    try:
        arr = np.asarray(ring, dtype=np.float64)
    except (ValueError, TypeError):
        arr = np.empty((0,))
    if arr.ndim != 2 or arr.shape[1] < 2 or arr.shape[0] < 3 or not np.all(np.isfinite(arr[:, :2])):
        raise AnnotationError(f"{name}: polygon {index} has malformed coordinates; {QUPATH_FIX}")
    return arr[:, :2]


def load_geojson(path: str | Path, slide_dimensions: tuple[int, int], *, downsample: float = 16.0,
                 class_names: Sequence[str] | None = None) -> LabelMask:
    """Rasterise QuPath annotations (GeoJSON, level-0 pixel coordinates) into a :class:`LabelMask`.

    Polygons and MultiPolygons are filled, their holes (interior rings) cut out; where features
    overlap, the later one in the file wins. The class comes from
    ``properties.classification.name`` (QuPath >= 0.2), a string ``properties.classification``,
    or ``properties.name``; unclassified features are skipped with a warning.

    Args:
        path: a FeatureCollection, a list of Features or a single Feature.
        slide_dimensions: (width, height) of the slide's level 0.
        downsample: level-0 pixels per mask pixel (the exact value is adjusted so that a whole
            number of mask pixels covers the slide).
        class_names: fixes the class ids (1, 2, ... in this order, all reported even when absent);
            features of other classes are skipped with a warning. Default: order of first appearance.

    Returns:
        The rasterised :class:`LabelMask`.
    """
    p = _check_path(path, "annotation file")
    if not (math.isfinite(downsample) and downsample > 0):
        raise ConfigError(f"annotation downsample {downsample!r} must be positive, e.g. 16")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{p.name}: not valid GeoJSON (line {exc.lineno}: {exc.msg}); {QUPATH_FIX}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise AnnotationError(f"{p.name}: cannot be read as text ({type(exc).__name__}); {QUPATH_FIX}") from None

    features = _features(data, p.name)
    if not features:
        raise AnnotationError(f"{p.name} has no features: annotate the slide in QuPath, then {QUPATH_FIX}")

    found_types: Counter = Counter()
    shapes: list[tuple[str, list]] = []  # (class, polygon)
    unclassified = with_polygons = 0
    for feature in features:
        polys = _polygons(feature.get("geometry"), found_types)
        if not polys:
            continue
        with_polygons += 1
        cls = _class_of(feature)
        if cls is None:
            unclassified += 1
            continue
        shapes.extend((cls, poly) for poly in polys)
    if not with_polygons:
        kinds = ", ".join(sorted(found_types)) or "no geometry"
        raise AnnotationError(
            f"{p.name} has {len(features)} features but no Polygon or MultiPolygon (found {kinds}): "
            "draw area annotations (polygon, brush, rectangle) in QuPath and export them again")
    if unclassified:
        log.warning("%s: %d unclassified feature(s) ignored: set a class on them in QuPath to use them",
                    p.name, unclassified)
    if not shapes:
        raise AnnotationError(
            f"{p.name}: none of its {unclassified} polygon features has a class: "
            "set a class on each annotation in QuPath, then export them again")

    if class_names is not None:
        order = list(dict.fromkeys(class_names))
        skipped = Counter(c for c, _ in shapes if c not in order)
        if skipped:
            log.warning("%s: features of classes not asked for ignored: %s", p.name,
                        ", ".join(f"{c} ({n})" for c, n in skipped.items()))
        shapes = [(c, poly) for c, poly in shapes if c in order]
        if not shapes:
            raise AnnotationError(
                f"{p.name} has no polygon of the classes {', '.join(order)} "
                f"(found {', '.join(skipped)}): check the class names")
    else:
        order = list(dict.fromkeys(c for c, _ in shapes))
    ids = {c: i + 1 for i, c in enumerate(order)}

    sw, sh = int(slide_dimensions[0]), int(slide_dimensions[1])
    mw, mh = max(1, round(sw / downsample)), max(1, round(sh / downsample))
    dx, dy = sw / mw, sh / mh
    dtype = np.uint8 if len(order) < 256 else np.int32
    labels = np.zeros((mh, mw), dtype=dtype)
    inside = 0
    for index, (cls, poly) in enumerate(shapes):
        if not isinstance(poly, list) or not poly:
            raise AnnotationError(f"{p.name}: polygon {index} of class {cls} has no rings; {QUPATH_FIX}")
        rings = [_ring_array(r, p.name, index) for r in poly]
        ext = rings[0]
        if ext[:, 0].max() <= 0 or ext[:, 1].max() <= 0 or ext[:, 0].min() >= sw or ext[:, 1].min() >= sh:
            continue
        inside += 1
        _fill(labels, rings, ids[cls], dx, dy)
    if not inside:
        raise AnnotationError(
            f"{p.name}: all {len(shapes)} polygons lie outside the slide ({sw}x{sh} px): "
            "check that the annotations belong to this slide and use level-0 pixel coordinates")
    if inside < len(shapes):
        log.warning("%s: %d polygon(s) outside the slide ignored", p.name, len(shapes) - inside)
    if not labels.any():
        raise AnnotationError(
            f"{p.name}: every polygon is smaller than one mask pixel at downsample {downsample:g}: "
            "rasterise at a lower annotation downsample")
    mask = LabelMask(labels, {0: BACKGROUND, **{i: c for c, i in ids.items()}}, (dx, dy))
    log.info("%s: %d polygons rasterised at %dx%d (downsample %.3g), classes %s",
             p.name, inside, mw, mh, dx, ", ".join(order))
    return mask


def _fill(labels: np.ndarray, rings: list[np.ndarray], cid: int, dx: float, dy: float) -> None:
    """Paint one polygon (exterior minus holes) with ``cid``; mask pixel centres decide."""
    from skimage.draw import polygon as draw_polygon

    mh, mw = labels.shape
    # mask pixel (r, c) covers level-0 [c*dx, (c+1)*dx): its centre is at level-0 (c + 0.5) * dx
    cols = [r[:, 0] / dx - 0.5 for r in rings]
    rows = [r[:, 1] / dy - 0.5 for r in rings]
    c0 = max(0, math.floor(cols[0].min()))
    r0 = max(0, math.floor(rows[0].min()))
    c1 = min(mw, math.ceil(cols[0].max()) + 1)
    r1 = min(mh, math.ceil(rows[0].max()) + 1)
    if c1 <= c0 or r1 <= r0:
        return
    local = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    rr, cc = draw_polygon(rows[0] - r0, cols[0] - c0, shape=local.shape)
    local[rr, cc] = True
    for hr, hc in zip(rows[1:], cols[1:]):
        rr, cc = draw_polygon(hr - r0, hc - c0, shape=local.shape)
        local[rr, cc] = False
    labels[r0:r1, c0:c1][local] = cid


# ----- labels per field -------------------------------------------------------------------------
def assign_label(fractions: dict[str, float], *, min_fraction: float = 0.8,
                 negative_class: str | None = None,
                 positive_classes: Sequence[str] | None = None) -> str | None:
    """One label for a field from its class fractions, or None to drop the field.

    Rules: the class covering the most of the field wins when it covers at least
    ``min_fraction``. Otherwise, with ``negative_class`` set, the field is ``negative_class``
    when every positive class (``positive_classes``, or every class but ``negative_class``)
    covers 0 % of it; e.g. only tumour is annotated and fields without any tumour are "normal"
    (the caller checks that the field holds tissue). Any other field is mixed and dropped.

    Args:
        fractions: class name -> share of the field (from :meth:`LabelMask.fractions`).
        min_fraction: share a class needs to name the field, in (0, 1].
        negative_class: label of fields untouched by every positive class.
        positive_classes: the classes that must be absent for ``negative_class``.
    """
    if not (0 < min_fraction <= 1):
        raise ConfigError(f"min_fraction {min_fraction!r} must be in (0, 1], e.g. 0.8")
    if positive_classes is not None and negative_class in positive_classes:
        raise ConfigError(f"class {negative_class!r} cannot be both the negative and a positive class")
    best = max(fractions, key=lambda c: fractions[c], default=None)
    if best is not None and fractions[best] >= min_fraction - ZERO_TOL:
        return best
    if negative_class is None:
        return None
    positives = list(positive_classes) if positive_classes is not None else \
        [c for c in fractions if c != negative_class]
    if all(fractions.get(c, 0.0) <= ZERO_TOL for c in positives):
        return negative_class
    return None


#: QuPath-style colours for predicted classes (packed RGB lists), in class order, repeated when more
CLASS_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                 (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def tiles_geojson(boxes: Sequence[tuple[float, float, float, float]], probs: np.ndarray,
                  class_names: Sequence[str]) -> dict[str, Any]:
    """A FeatureCollection QuPath imports (File > Import objects): one tile object per box.

    Args:
        boxes: ``(left, top, width, height)`` per tile in the file's level-0 pixel coordinates.
        probs: ``(n, n_classes)`` class probabilities.
        class_names: class names in probability order.

    Returns:
        GeoJSON: each feature a closed square ``Polygon``, ``objectType`` "tile", classification =
        the most probable class (name and colour), measurements = ``prob_<class>``.
    """
    features = []
    for (left, top, width, height), p in zip(boxes, probs):
        k = int(np.argmax(p))
        ring = [[left, top], [left + width, top], [left + width, top + height], [left, top + height], [left, top]]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[round(x, 2), round(y, 2)] for x, y in ring]]},
            "properties": {
                "objectType": "tile",
                "classification": {"name": class_names[k], "color": list(CLASS_COLOURS[k % len(CLASS_COLOURS)])},
                "measurements": {f"prob_{c}": round(float(v), 6) for c, v in zip(class_names, p)},
            },
        })
    return {"type": "FeatureCollection", "features": features}
