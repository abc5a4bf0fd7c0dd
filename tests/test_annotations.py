"""Label masks and QuPath GeoJSON: loading, rasterising, field fractions and field labels."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histomag.annotations import LabelMask, assign_label, load_geojson, load_label_mask
from histomag.errors import AnnotationError, ConfigError


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _feature(geometry: dict, classification="Tumor", key="qupath02") -> dict:
    props: dict = {"objectType": "annotation"}
    if key == "qupath02":
        props["classification"] = {"name": classification, "color": [200, 0, 0]}
    elif key == "string":
        props["classification"] = classification
    elif key == "name":
        props["name"] = classification
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _square(x0, y0, x1, y1) -> list:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _collection(*features) -> dict:
    return {"type": "FeatureCollection", "features": list(features)}


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


# ----- LabelMask.fractions ----------------------------------------------------------------------
def test_fractions_exact_on_a_known_mask():
    labels = np.zeros((4, 6), np.uint8)
    labels[:, :3] = 1
    labels[:2, 3:] = 2
    lm = LabelMask(labels, {1: "normal", 2: "tumor"}, (10.0, 5.0))  # slide 60 x 20
    assert lm.classes == ["normal", "tumor"]
    assert lm.class_names[0] == "background"
    assert lm.fractions(0, 0, 30, 20) == {"normal": 1.0, "tumor": 0.0}
    assert lm.fractions(30, 0, 30, 10) == {"normal": 0.0, "tumor": 1.0}
    f = lm.fractions(25.0, 7.5, 10.0, 5.0)  # half normal, tumour only in its top half's right half
    assert f["normal"] == pytest.approx(0.5, abs=1e-12)
    assert f["tumor"] == pytest.approx(0.25, abs=1e-12)
    out = lm.fractions(-30, 0, 60, 20)  # half outside the slide
    assert out["normal"] == pytest.approx(0.5, abs=1e-12) and out["tumor"] == 0.0


def test_unnamed_ids_get_default_names():
    lm = LabelMask(np.array([[0, 3], [3, 3]], np.uint8), {}, (1.0, 1.0))
    assert lm.class_names == {0: "background", 3: "class-3"}
    assert lm.fractions(0, 0, 2, 2) == {"class-3": 0.75}


# ----- load_label_mask --------------------------------------------------------------------------
def test_label_png_downsample_is_inferred(tmp_path):
    labels = np.zeros((50, 80), np.uint8)
    labels[10:20, 40:60] = 2
    path = _png(tmp_path / "a.png", labels)
    lm = load_label_mask(path, (1280, 800), {0: "background", 1: "normal", 2: "tumor"})
    assert lm.downsample == (16.0, 16.0)
    assert lm.fractions(40 * 16, 10 * 16, 20 * 16, 10 * 16) == {"normal": 0.0, "tumor": 1.0}
    assert lm.fractions(40 * 16 - 160, 10 * 16, 320, 160)["tumor"] == pytest.approx(0.5)


def test_label_mask_aspect_mismatch(tmp_path):
    path = _png(tmp_path / "a.png", np.zeros((50, 100), np.uint8))
    with pytest.raises(AnnotationError) as err:
        load_label_mask(path, (1000, 1000), slide_name="s")
    msg = _one_line(err)
    assert "a.png is 100x50 (aspect 2)" in msg and "slide s is 1000x1000 (aspect 1)" in msg
    assert "export the mask at the slide's aspect ratio" in msg
    # within the tolerance (rounding of an odd slide size) is fine
    assert load_label_mask(path, (2001, 1000)).downsample[0] == pytest.approx(20.01)


def test_sidecar_class_names(tmp_path):
    path = _png(tmp_path / "mask.png", np.array([[0, 1], [2, 2]], np.uint8))
    _write(tmp_path / "classes.json", {"0": "background", "1": "normal", "2": "tumor"})
    lm = load_label_mask(path, (20, 20))
    assert lm.class_names == {0: "background", 1: "normal", 2: "tumor"}
    assert lm.fractions(0, 0, 20, 20) == {"normal": 0.25, "tumor": 0.5}
    # an explicit mapping wins over the sidecar
    assert load_label_mask(path, (20, 20), {1: "a", 2: "b"}).classes == ["a", "b"]
    _write(tmp_path / "classes.json", "[1, 2")
    with pytest.raises(AnnotationError) as err:
        load_label_mask(path, (20, 20))
    assert "classes.json" in _one_line(err)


def test_label_mask_without_names_and_palette_images(tmp_path):
    arr = np.array([[0, 1], [5, 5]], np.uint8)
    img = Image.fromarray(arr, mode="L").convert("P")  # palette indices are the ids
    img.save(tmp_path / "p.png")
    lm = load_label_mask(tmp_path / "p.png", (4, 4))
    assert np.array_equal(lm.labels, arr)
    assert lm.classes == ["class-1", "class-5"]


def test_label_mask_colour_missing_and_unreadable(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    with pytest.raises(AnnotationError) as err:
        load_label_mask(_png(tmp_path / "c.png", rgb), (4, 4))
    assert "single-channel" in _one_line(err)
    gray_rgb = np.repeat(np.array([[0, 1], [2, 1]], np.uint8)[..., None], 3, axis=2)
    assert load_label_mask(_png(tmp_path / "g.png", gray_rgb), (2, 2)).classes == ["class-1", "class-2"]
    with pytest.raises(AnnotationError) as err:
        load_label_mask(tmp_path / "x.png", (4, 4))
    assert "label mask x.png does not exist: check the path" in _one_line(err)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(AnnotationError) as err:
        load_label_mask(tmp_path / "bad.png", (4, 4))
    assert "bad.png cannot be read" in _one_line(err)


# ----- load_geojson -----------------------------------------------------------------------------
def test_geojson_square_area(tmp_path):
    geo = _write(tmp_path / "a.geojson", _collection(
        _feature({"type": "Polygon", "coordinates": [_square(1000, 1200, 3000, 2600)]})))
    lm = load_geojson(geo, (8000, 6000), downsample=16)
    assert lm.labels.shape == (375, 500) and lm.downsample == (16.0, 16.0)
    assert lm.class_names == {0: "background", 1: "Tumor"}
    area = (lm.labels == 1).sum() * 16 * 16
    assert area == pytest.approx(2000 * 1400, rel=0.02)
    assert lm.fractions(1500, 1500, 500, 500) == {"Tumor": 1.0}
    assert lm.fractions(5000, 5000, 500, 500) == {"Tumor": 0.0}
    assert lm.fractions(2900, 1500, 200, 200)["Tumor"] == pytest.approx(0.5, abs=0.05)


def test_geojson_hole_and_multipolygon(tmp_path):
    hole = {"type": "Polygon", "coordinates": [_square(0, 0, 1600, 1600), _square(400, 400, 1200, 1200)]}
    multi = {"type": "MultiPolygon", "coordinates": [[_square(2000, 0, 2800, 800)],
                                                     [_square(2000, 1200, 2400, 1600)]]}
    geo = _write(tmp_path / "b.geojson", _collection(_feature(hole, "Stroma"), _feature(multi, "Tumor")))
    lm = load_geojson(geo, (3200, 1600), downsample=16)
    assert lm.classes == ["Stroma", "Tumor"]
    stroma = (lm.labels == 1).sum() * 256
    assert stroma == pytest.approx(1600 * 1600 - 800 * 800, rel=0.02)
    tumor = (lm.labels == 2).sum() * 256
    assert tumor == pytest.approx(800 * 800 + 400 * 400, rel=0.02)
    assert lm.fractions(500, 500, 600, 600) == {"Stroma": 0.0, "Tumor": 0.0}  # in the hole
    assert lm.fractions(0, 0, 300, 300)["Stroma"] == 1.0


@pytest.mark.parametrize("key", ["qupath02", "string", "name"])
def test_geojson_classification_formats(tmp_path, key):
    geo = _write(tmp_path / "c.geojson", [
        _feature({"type": "Polygon", "coordinates": [_square(0, 0, 320, 320)]}, "Normal", key),
        _feature({"type": "Polygon", "coordinates": [_square(320, 0, 640, 320)]}, "Tumor", key)])
    lm = load_geojson(geo, (640, 320), downsample=8)
    assert lm.classes == ["Normal", "Tumor"]  # order of first appearance
    assert lm.fractions(0, 0, 640, 320) == {"Normal": 0.5, "Tumor": 0.5}


def test_geojson_single_feature_class_order_and_unclassified(tmp_path, caplog):
    single = _write(tmp_path / "one.geojson", _feature({"type": "Polygon", "coordinates": [_square(0, 0, 64, 64)]}))
    assert load_geojson(single, (128, 128), downsample=4).classes == ["Tumor"]
    unclassified = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [_square(64, 64, 128, 128)]},
                    "properties": {"objectType": "annotation"}}
    geo = _write(tmp_path / "d.geojson", _collection(
        _feature({"type": "Polygon", "coordinates": [_square(0, 0, 64, 64)]}, "Tumor"),
        _feature({"type": "Polygon", "coordinates": [_square(64, 0, 128, 64)]}, "Other"),
        unclassified))
    with caplog.at_level(logging.WARNING, logger="histomag.annotations"):
        lm = load_geojson(geo, (128, 128), downsample=4, class_names=["Normal", "Tumor"])
    assert lm.class_names == {0: "background", 1: "Normal", 2: "Tumor"}
    assert lm.fractions(0, 0, 128, 128) == {"Normal": 0.0, "Tumor": 0.25}
    assert "unclassified" in caplog.text and "Other" in caplog.text


@pytest.mark.parametrize("content, expected", [
    ('{"type": "FeatureCollection",\n "features": [\n {"type": "Feature" "geometry": 1}]}',
     "not valid GeoJSON (line 3: Expecting ','"),
    ("", "not valid GeoJSON (line 1"),
    ('{"type": "FeatureCollection", "features": []}', "has no features"),
    ('{"hello": 1}', "not a GeoJSON FeatureCollection"),
    (json.dumps(_collection(_feature({"type": "Point", "coordinates": [1, 2]}),
                            _feature({"type": "LineString", "coordinates": [[1, 2], [3, 4]]}))),
     "no Polygon or MultiPolygon (found LineString, Point)"),
    (json.dumps(_collection({"type": "Feature", "properties": {},
                             "geometry": {"type": "Polygon", "coordinates": [_square(0, 0, 50, 50)]}})),
     "none of its 1 polygon features has a class"),
    (json.dumps(_collection(_feature({"type": "Polygon", "coordinates": [_square(5000, 0, 6000, 100)]}))),
     "all 1 polygons lie outside the slide (1000x1000 px)"),
    (json.dumps(_collection(_feature({"type": "Polygon", "coordinates": [[[0, 0], ["a", 1], [3, 3]]]}))),
     "polygon 0 has malformed coordinates"),
])
def test_geojson_errors_are_one_line(tmp_path, content, expected):
    path = _write(tmp_path / "bad.geojson", content)
    with pytest.raises(AnnotationError) as err:
        load_geojson(path, (1000, 1000))
    msg = _one_line(err)
    assert msg.startswith("bad.geojson")
    assert expected in msg


def test_geojson_missing_file(tmp_path):
    with pytest.raises(AnnotationError) as err:
        load_geojson(tmp_path / "none.geojson", (10, 10))
    assert "none.geojson does not exist" in _one_line(err)


# ----- assign_label -----------------------------------------------------------------------------
def test_assign_label_majority_class():
    assert assign_label({"normal": 0.85, "tumor": 0.1}) == "normal"
    assert assign_label({"normal": 0.1, "tumor": 0.9}, min_fraction=0.8) == "tumor"
    assert assign_label({"normal": 0.5, "tumor": 0.5}) is None  # mixed: dropped
    assert assign_label({"normal": 0.5, "tumor": 0.5}, min_fraction=0.5) in ("normal", "tumor")
    assert assign_label({"a": 0.6, "b": 0.3}, min_fraction=0.5) == "a"
    assert assign_label({}) is None


def test_assign_label_negative_class():
    # only tumour annotated: fields without any tumour are "normal"
    assert assign_label({"tumor": 0.0}, negative_class="normal") == "normal"
    assert assign_label({"tumor": 0.3}, negative_class="normal") is None
    assert assign_label({"tumor": 0.95}, negative_class="normal") == "tumor"
    assert assign_label({"normal": 0.5, "tumor": 0.0}, negative_class="normal") == "normal"
    # with explicit positives, other classes do not block the negative label
    f = {"tumor": 0.0, "stroma": 0.4}
    assert assign_label(f, negative_class="normal") is None
    assert assign_label(f, negative_class="normal", positive_classes=["tumor"]) == "normal"
    with pytest.raises(ConfigError):
        assign_label(f, negative_class="tumor", positive_classes=["tumor"])
    with pytest.raises(ConfigError):
        assign_label(f, min_fraction=0.0)


def test_assign_label_with_geojson_fields(tmp_path):
    geo = _write(tmp_path / "t.geojson", _collection(
        _feature({"type": "Polygon", "coordinates": [_square(0, 0, 512, 512)]}, "Tumor")))
    lm = load_geojson(geo, (1024, 1024), downsample=16)
    labels = [assign_label(lm.fractions(x, 0, 256, 256), negative_class="Normal") for x in (0, 384, 768)]
    assert labels == ["Tumor", None, "Normal"]


def test_geojson_grid_aligned_square_fills_exactly_its_mask_pixels(tmp_path):
    geo = _write(tmp_path / "g.geojson", _feature({"type": "Polygon", "coordinates": [_square(16, 32, 80, 64)]}))
    lm = load_geojson(geo, (160, 160), downsample=16)
    expected = np.zeros((10, 10), np.uint8)
    expected[2:4, 1:5] = 1
    assert np.array_equal(lm.labels, expected)


def test_tiles_geojson_round_trips_through_the_qupath_reader(tmp_path) -> None:
    import json

    import numpy as np

    from histomag.annotations import load_geojson, tiles_geojson

    boxes = [(0, 0, 64, 64), (64, 0, 64, 64), (0, 64, 64, 64)]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    path = tmp_path / "tiles.geojson"
    path.write_text(json.dumps(tiles_geojson(boxes, probs, ["tumour", "stroma"])))
    mask = load_geojson(path, (128, 128), downsample=4, class_names=["tumour", "stroma"])
    assert mask.fractions(0, 0, 64, 64)["tumour"] == pytest.approx(1.0)
    assert mask.fractions(64, 0, 64, 64)["stroma"] == pytest.approx(1.0)
    assert mask.fractions(0, 64, 64, 64)["tumour"] == pytest.approx(1.0)
    assert mask.fractions(64, 64, 64, 64) == {"tumour": 0.0, "stroma": 0.0}
    feature = json.loads(path.read_text())["features"][1]
    assert feature["properties"]["objectType"] == "tile"
    assert feature["properties"]["measurements"] == {"prob_tumour": 0.2, "prob_stroma": 0.8}
