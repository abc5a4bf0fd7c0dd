"""The report's per-slide section: what a DMSL run predicted on whole slides (``histomag dmsl predict RUN SLIDE``).

Per slide: the resolution it was read at and where that came from, the overlay (predicted class per
field over the thumbnail), the area of each class in mm², the most confident fields of each class
as image strips at every magnification of the run (read from the slide now, with the run's tile
settings), and the per-class probability overlays. Every prediction folder is read through
:class:`~histomag.dmsl.slides.SlidePrediction`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from histomag.dmsl.slides import SlidePrediction
from histomag.errors import HistomagError
from histomag.report.markup import code, esc, figure, image, note, table
from histomag.report.sections import Section, h3

#: the command the page tells its reader to run (page text, not an error)
PREDICT_COMMAND = "histomag dmsl predict RUN SLIDE --out DIR"
#: most confident fields shown per class
TOP_FIELDS = 6
#: side of one field in a strip (px)
STRIP_TILE = 150


def prediction_folders(folders: Sequence[tuple[str, Path]]) -> list[tuple[str, SlidePrediction]]:
    """``(label, record)`` of every slide in the folders, in folder order (a folder without any is skipped)."""
    out = []
    for label, folder in folders:
        for record in SlidePrediction.find(folder):
            out.append((label, record))
    return out


def slides_section(folders: Sequence[tuple[str, Path]]) -> Section:
    """The "Slides" section of the prediction folders given (``(label, folder)``)."""
    records = prediction_folders(folders)
    if not records:
        where = (f" (none in {', '.join(code(str(f)) for _, f in folders)})" if folders else "")
        return Section("slides", "Slides", note(f"no slide predictions{where}: run {code(PREDICT_COMMAND)} and pass "
                                                 f"DIR to the report."), available=False)
    body, subs = [], []
    for n, (label, record) in enumerate(records, start=1):
        sid = f"slide-{n}"
        subs.append((sid, record.slide_id))
        body.append(h3(sid, f"{record.slide_id}") + _slide_body(label, record))
    intro = ("<p>Each field of the run's grid is tinted with its predicted class (opacity = its probability). "
             "Areas count each field once, for its predicted class, as its grid cell at the slide's true "
             "resolution: cells of a grid abut, so overlapping fields are not counted twice.</p>")
    return Section("slides", "Slides", intro + "".join(body), subsections=subs)


def _resolution_text(record: SlidePrediction) -> str:
    return f"{record.mpp:.4g} µm/px = {record.resolution.magnification:.3g}x"


def _slide_body(label: str, record: SlidePrediction) -> str:
    ts = record.tile_settings
    mags = ", ".join(f"{float(m):g}x" for m in ts.get("magnifications", []))
    overlap = float(ts.get("overlap", 0.0))
    facts = [
        ("slide", code(record.slide)),
        ("prediction folder", f"{code(str(record.folder))} ({esc(label)})"),
        ("run", code(record.run) + (f", fold {record.fold}" if record.fold is not None else ", mean of its folds")),
        ("resolution", f'<span data-mpp="{record.mpp:.6g}">{esc(_resolution_text(record))}</span>, source: '
                       f'<b data-mpp-source="{esc(record.mpp_source)}">{esc(record.mpp_source)}</b>'),
        ("fields", f"{record.n_fields} fields of {record.field_um:.4g} µm ({esc(mags)}; {esc(ts.get('size', '?'))} px at "
                   f"the highest), overlap {overlap:g}; each counts as a {record.resolution.length_um(record.stride):.4g}"
                   f" µm cell of {record.cell_area_mm2:.4g} mm²"),
    ]
    parts = [table(["", ""], [[f"<b>{k}</b>", v] for k, v in facts], raw=True, css="compact facts")]
    overlay = record.file("overlay")
    if overlay is not None:
        parts.append(figure(image(overlay, f"overlay of {record.slide_id}"),
                            f"{esc(record.slide_id)}: predicted class per field over the slide (opacity = probability); "
                            "the scale bar is drawn from the resolution above."))
    else:
        parts.append(note(f"{esc(record.files.get('overlay', 'the overlay'))} is missing: run {code(PREDICT_COMMAND)} "
                          "again."))
    areas = record.areas_mm2
    total = sum(areas.values()) or 1.0
    rows = [[esc(c), f'<span data-class="{esc(c)}" data-fields="{record.counts.get(c, 0)}">{record.counts.get(c, 0)}</span>',
             f'<span data-class="{esc(c)}" data-area-mm2="{areas[c]:.9g}">{areas[c]:.4g}</span>',
             f"{100 * areas[c] / total:.1f} %"] for c in record.classes]
    parts.append(table(["class", "fields", "area (mm²)", "share"], rows, raw=True, numeric_from=1,
                       caption=f"area = fields x {record.cell_area_mm2:.4g} mm²"))
    parts.append(_strips(record))
    per_class = [figure(image(p, f"P({c}) overlay of {record.slide_id}"), f"P({esc(c)}) per field")
                 for c in record.classes if (p := record.file(f"overlay.{c}")) is not None]
    if per_class:
        parts.append(f"<details><summary>probability of each class ({len(per_class)} overlays)</summary>"
                     f'<div class="grid">{"".join(per_class)}</div></details>')
    return "".join(parts)


def _strips(record: SlidePrediction) -> str:
    """The most confident fields of each class, as one strip image per class (a row per magnification)."""
    try:
        xy, predicted, probs = record.read_fields()
    except HistomagError as exc:
        return note(esc(str(exc)))
    try:
        slide = record.open_slide()
    except (HistomagError, OSError) as exc:
        return note(f"the fields cannot be shown: {esc(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}")
    out = [f"<h4>Most confident fields of each class</h4><p class=\"hint\">Up to {TOP_FIELDS} fields predicted as "
           "each class, highest probability first; one row per magnification of the run, read from the slide now.</p>"]
    with slide:
        for k, c in enumerate(record.classes):
            idx = [i for i in np.argsort(-probs[:, k], kind="stable") if predicted[i] == c][:TOP_FIELDS] if len(probs) else []
            if not idx:
                out.append(f"<p><b>{esc(c)}</b>: no field predicted as {esc(c)}.</p>")
                continue
            try:
                png = strip_png(slide, record, xy[idx], probs[idx, k])
            except HistomagError as exc:
                out.append(note(f"{esc(c)}: {esc(str(exc))}"))
                continue
            where = ", ".join(f"({x:.0f}, {y:.0f})" for x, y in xy[idx])
            out.append(figure(image(png, f"most confident {c} fields of {record.slide_id}"),
                              f"<b>{esc(c)}</b>: P = {', '.join(f'{p:.3f}' for p in probs[idx, k])}; field centres "
                              f"(level-0 px) {esc(where)}"))
    return "".join(out)


def strip_png(slide, record: SlidePrediction, centres: np.ndarray, p: np.ndarray) -> bytes:  # noqa: ANN001
    """One image: a row per magnification, a column per field (each ``STRIP_TILE`` px), labelled."""
    from PIL import Image, ImageDraw

    from histomag.tiling.fields import Field, make_tuple_spec, read_tuple
    from histomag.tiling.overlay import font

    ts = record.tile_settings
    spec = make_tuple_spec(ts["magnifications"], int(ts["size"]), ts.get("mode", "same-fov"),
                           power_mpp=slide.power_mpp)
    fs = 14
    fnt = font(fs)
    left, top, gap = 70, fs + 10, 6
    n = len(centres)
    rows = len(spec.members)
    canvas = Image.new("RGB", (left + n * (STRIP_TILE + gap), top + rows * (STRIP_TILE + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, ((x, y), q) in enumerate(zip(centres, p)):
        images = read_tuple(slide, spec, Field(float(x), float(y), record.field_width),
                            allow_upsample=bool(ts.get("allow_upsample", False)))
        cx = left + j * (STRIP_TILE + gap)
        draw.text((cx, 4), f"P = {q:.2f}", fill=(0, 0, 0), font=fnt)
        for i, (member, rgb) in enumerate(zip(spec.members, images)):
            tile = Image.fromarray(np.ascontiguousarray(rgb[..., :3])).resize(
                (STRIP_TILE, STRIP_TILE), Image.Resampling.LANCZOS if rgb.shape[0] > STRIP_TILE else Image.Resampling.NEAREST)
            canvas.paste(tile, (cx, top + i * (STRIP_TILE + gap)))
    for i, member in enumerate(spec.members):
        y0 = top + i * (STRIP_TILE + gap)
        draw.text((6, y0 + STRIP_TILE // 2 - fs), member.name, fill=(0, 0, 0), font=fnt)
        draw.text((6, y0 + STRIP_TILE // 2 + 2), f"{member.size} px", fill=(90, 90, 90), font=font(11))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
