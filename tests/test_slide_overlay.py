"""Slide overlays (``histomag dmsl predict RUN SLIDE``) and the report's per-slide section.

Most tests use a prediction folder written by the library's own writer with made-up probabilities
(no model); one trains a tiny run and goes through the command line end to end.
"""

from __future__ import annotations

import base64
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_slide_prediction, make_tuple_folder, two_class_slide

from histomag.dmsl.slides import SlidePrediction
from histomag.tiling.overlay import MAX_ALPHA, slide_thumbnail

MPP = 0.25
CELL_MM2 = (64 * MPP / 1000) ** 2  # a 64 px field at 0.25 µm/px, no overlap


@pytest.fixture(scope="module")
def predicted(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("overlay")
    slide = two_class_slide(root / "slide.png")
    return {"slide": slide, "folder": root / "pred", **make_slide_prediction(root / "pred", slide, overlay_width=400)}


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _thumbnail(slide: Path, width: int) -> tuple[np.ndarray, tuple[float, float]]:
    from histomag.slide import open_slide

    with open_slide(slide, mpp=MPP) as s:
        thumb, ds = slide_thumbnail(s, width)
    return thumb.astype(int), ds


# ----- overlays ---------------------------------------------------------------------------------
def test_the_overlay_has_the_requested_width_a_legend_and_a_scale_bar_of_its_stated_length(predicted) -> None:
    record = SlidePrediction.read(predicted["prediction"])
    im = _rgb(predicted["overlay"])
    ov = record.overlay
    assert im.shape[1] == 400 == ov["width"] and im.shape[0] == ov["height"]
    assert ov["thumbnail_height"] == 200  # 1024 x 512 px slide at 400 px wide; the key is a band below it
    bar = ov["scale_bar"]
    ds = ov["downsample"][0]
    assert ds == pytest.approx(1024 / 400)
    assert bar["mm"] * 1000 == pytest.approx(bar["um"]) and str(bar["um"])[0] in "125"
    assert bar["px"] == round(bar["mm"] * 1000 / record.mpp / ds)  # mm / mpp / downsample
    assert bar["px"] <= 400 / 4
    # the bar as drawn: exactly px black pixels in its row, white on either side
    row = im[bar["y"], bar["x"] - 1:bar["x"] + bar["px"] + 1]
    assert (row[1:-1] == 0).all() and (row[[0, -1]] > 200).all()
    assert bar["y"] > ov["thumbnail_height"]
    # a legend swatch of each class colour in the band
    band = im[ov["thumbnail_height"]:]
    for name, colour in ov["colours"].items():
        assert (band == colour).all(axis=2).sum() >= 40, name
    assert ov["colours"]["dots"] != ov["colours"]["rings"]
    for c in record.classes:  # one probability overlay per class, as wide, over the same thumbnail
        other = _rgb(predicted[f"overlay.{c}"])
        assert other.shape[1] == 400 and other.shape[0] > ov["thumbnail_height"]


def test_a_field_shows_its_predicted_class_colour_at_its_probability_and_glass_stays_as_it_is(predicted) -> None:
    record = SlidePrediction.read(predicted["prediction"])
    im = _rgb(predicted["overlay"])
    per_class = {c: _rgb(predicted[f"overlay.{c}"]) for c in record.classes}
    thumb, (dx, dy) = _thumbnail(predicted["slide"], 400)
    xy, predicted_class, probs = record.read_fields()
    colours = {c: np.array(v) for c, v in record.overlay["colours"].items()}
    for c in record.classes:
        i = predicted_class.index(c)
        k = record.classes.index(c)
        px, py = int(xy[i, 0] / dx), int(xy[i, 1] / dy)
        a = MAX_ALPHA * probs[i, k]
        expected = (1 - a) * thumb[py, px] + a * colours[c]
        assert np.abs(im[py, px] - expected).max() <= 1, c
        for other, k2 in ((o, record.classes.index(o)) for o in record.classes):  # P(other) overlays
            a2 = MAX_ALPHA * probs[i, k2]
            assert np.abs(per_class[other][py, px] - ((1 - a2) * thumb[py, px] + a2 * colours[other])).max() <= 1
    glass = np.s_[:200, 220:]  # no field on the right half
    assert (im[glass] == thumb[glass]).all()


def test_areas_are_field_counts_times_the_grid_cell_area(predicted) -> None:
    record = SlidePrediction.read(predicted["prediction"])
    assert record.counts == {"dots": 32, "rings": 32} and record.mpp_source == "override"
    assert record.stride == record.field_width == 64 and record.cell_area_mm2 == pytest.approx(CELL_MM2)
    assert record.areas_mm2 == pytest.approx({"dots": 32 * CELL_MM2, "rings": 32 * CELL_MM2})
    assert record.run.endswith("run") and Path(record.slide) == predicted["slide"].resolve()


def test_overlapping_fields_count_their_grid_cell_so_the_area_is_not_doubled(predicted, tmp_path: Path) -> None:
    paths = make_slide_prediction(tmp_path / "p", predicted["slide"], overlap=0.5, overlay_width=200)
    record = SlidePrediction.read(paths["prediction"])
    assert record.stride == 32 and record.n_fields > 2 * 64  # four times as many fields, each a quarter cell
    total = sum(record.areas_mm2.values())
    assert total == pytest.approx(record.n_fields * CELL_MM2 / 4)
    assert 0.8 * 64 * CELL_MM2 < total < 1.1 * 64 * CELL_MM2  # the same tissue as without overlap
    assert _rgb(paths["overlay"]).shape[1] == 200


# ----- the report ---------------------------------------------------------------------------------
def _section(text: str) -> str:
    return text[text.index('<section id="slides"'):text.index('<section id="magnification"')]


def _images(html: str) -> dict[str, Image.Image]:
    out = {}
    for uri, alt in re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)"', html):
        out[alt] = Image.open(io.BytesIO(base64.b64decode(uri)))
    return out


def test_the_report_shows_each_slide_with_its_resolution_areas_overlay_and_field_strips(predicted) -> None:
    from histomag.report.html import render_report

    section = _section(render_report([], predictions=[predicted["folder"]]))
    assert 'class="section"' in section and "Not available" not in section
    assert 'data-mpp-source="override"' in section and "0.25 µm/px = 40x" in section
    fields = dict(re.findall(r'data-class="([^"]+)" data-fields="(\d+)"', section))
    areas = dict(re.findall(r'data-class="([^"]+)" data-area-mm2="([^"]+)"', section))
    assert fields == {"dots": "32", "rings": "32"}
    for c, n in fields.items():
        assert float(areas[c]) == pytest.approx(int(n) * CELL_MM2)
    assert "overlapping fields are not counted twice" in section
    images = _images(section)
    assert images["overlay of slide"].width == 400
    assert {"P(dots) overlay of slide", "P(rings) overlay of slide"} <= set(images)
    for c in ("dots", "rings"):
        strip = images[f"most confident {c} fields of slide"]
        assert strip.height > 2 * 150 and strip.width > 6 * 150  # two magnifications x six fields
        grey = np.asarray(strip.convert("L"), dtype=float)
        assert grey.std() > 10
    # a prediction folder given among the runs is recognised as one
    assert 'data-fields="32"' in _section(render_report([predicted["folder"]]))


def test_a_missing_prediction_folder_is_an_input_path_error(tmp_path: Path) -> None:
    from histomag.errors import InputPathError
    from histomag.report.html import render_report

    with pytest.raises(InputPathError, match=r"predictions=.*no such folder.*predict_slide\("):
        render_report([], predictions=[tmp_path / "nope"])


def test_chromium_renders_the_slides_section_with_its_overlay(predicted, tmp_path: Path) -> None:
    from histomag.report.html import write_report
    from histomag.report.screenshot import find_chromium, render_html_to_png

    if find_chromium() is None:
        pytest.skip("no Chromium (chromium, chromium-browser or google-chrome) installed")
    page = write_report([], tmp_path / "r.html", predictions=[predicted["folder"]])
    png = tmp_path / "shot.png"
    assert render_html_to_png(page, png, width=1280, height=2400)
    shot = _rgb(png)
    assert shot.shape[:2] == (2400, 1280)
    grey = shot.mean(axis=2)
    assert grey.std() > 20 and (grey < 100).mean() > 0.005
    # the overlay's tint of the dots fields (blue over pink tissue) shows on the page
    blue = (shot[..., 2] > shot[..., 0] + 40) & (shot[..., 2] > 150)
    assert blue.sum() > 5000, blue.sum()


# ----- end to end -------------------------------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
def test_dmsl_predict_writes_overlays_and_the_report_shows_them(tmp_path: Path, capsys) -> None:
    import histomag.cli.dmsl  # noqa: F401  (registers the sub-app)
    import histomag.cli.report  # noqa: F401
    from histomag.cli.main import run
    from histomag.dmsl.config import DMSLConfig
    from histomag.dmsl.cv import cross_validate

    data = make_tuple_folder(tmp_path / "data", patients=4, per_class=3)
    config = DMSLConfig(mode="sim", backbone="tiny", batch_size=8, epochs=1, patience=5, folds=2, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_dir = cross_validate(data, tmp_path / "run", config, progress=False).run_dir
    slide = two_class_slide(tmp_path / "slide.png")
    capsys.readouterr()
    code = run(["dmsl", "predict", str(run_dir), str(slide), "--mpp", "0.25", "--fold", "1", "--overlay-width", "300",
                "--out", str(tmp_path / "out"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "slide.overlay.png" in out and "slide.prediction.json" in out
    record = SlidePrediction.read(tmp_path / "out" / "slide.prediction.json")
    assert record.fold == 1 and Path(record.run) == run_dir.resolve() and record.mpp == MPP
    assert record.n_fields == 64 and record.overlay["width"] == 300
    assert _rgb(tmp_path / "out" / "slide.overlay.png").shape[1] == 300
    code = run(["dmsl", "predict", str(run_dir), str(slide), "--mpp", "0.25", "--overlay-width", "10",
                "--out", str(tmp_path / "bad"), "--quiet"])
    _, err = capsys.readouterr()
    assert code == 2 and "--overlay-width 10" in err and err.count("\n") == 1
    code = run(["report", str(tmp_path / "out"), "--out", str(tmp_path / "r.html")])
    _, err = capsys.readouterr()
    assert code == 0, err
    section = _section((tmp_path / "r.html").read_text())
    total = sum(float(a) for a in re.findall(r'data-area-mm2="([^"]+)"', section))
    assert total == pytest.approx(64 * CELL_MM2)
