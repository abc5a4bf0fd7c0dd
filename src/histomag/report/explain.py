"""Report sections of the explain outputs: Grad-CAM panels and similarity statistics.

Folders come from ``--cams`` / ``--similarity`` or from ``cams/`` and ``similarity/`` inside the
DMSL run folders given. A Grad-CAM folder is what ``histomag dmsl cam`` writes (PNG panels and
``cams.csv``); a similarity folder is what ``histomag dmsl similarity`` writes
(``similarity.csv`` and ``similarity_pies.png``).
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Sequence
from pathlib import Path

from histomag.errors import InputPathError
from histomag.report.markup import code, esc, figure, image, note, table
from histomag.report.sections import Section

#: the commands the report's pages tell their reader to run (page text, not errors)
CAM_COMMAND = "histomag dmsl cam RUN DATA --out RUN/cams"
SIMILARITY_COMMAND = "histomag dmsl similarity RUN [RUN...] DATA --out RUN/similarity"
#: the calls that make an explain folder, in API terms (errors speak the API; the CLI names its commands)
CAM_API = "histomag.dmsl.explain.gradcam.run_cams(RUN, DATA, RUN/cams)"
SIMILARITY_API = "histomag.dmsl.explain.similarity_stats.write_similarity({name: RUN}, DATA, RUN/similarity)"
#: most Grad-CAM panels shown per folder (keeps the report's size reasonable)
MAX_CAMS = 24


def check_folder(path: Path, parameter: str, make: str) -> Path:
    """An explicitly given folder must exist.

    Raises:
        InputPathError: no such folder (the message names ``make``, the call that makes it).
    """
    if not Path(path).is_dir():
        raise InputPathError(f"{parameter}={path}: no such folder; make it with `{make}`")
    return Path(path)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ----- Grad-CAM ---------------------------------------------------------------------------------
def _cam_entries(folder: Path) -> list[tuple[Path, str]]:
    """``(png, caption html)`` in ``cams.csv`` order, else every PNG by name."""
    index = folder / "cams.csv"
    entries: list[tuple[Path, str]] = []
    if index.is_file():
        for r in _read_csv(index):
            png = folder / r.get("png", "")
            if not r.get("png") or not png.is_file():
                continue
            ok = str(r.get("correct", "")).strip() in ("1", "True", "true")
            verdict = '<span class="ok">correct</span>' if ok else '<span class="bad">wrong</span>'
            caption = (f"{code(r.get('tuple_id', png.stem))}: true {esc(r.get('label', '?'))}, predicted "
                       f"{esc(r.get('predicted', '?'))} (p = {esc(r.get('prob_predicted', '?'))}), {verdict}; "
                       f"CAM of {esc(r.get('explained_class', '?'))}")
            entries.append((png, caption))
    if not entries:
        entries = [(p, code(p.stem)) for p in sorted(folder.glob("*.png"))]
    return entries


def gradcam_section(folders: Sequence[tuple[str, Path]]) -> Section:
    """Grad-CAM panels of each folder (``(label, folder)``), at most :data:`MAX_CAMS` each."""
    title = "Grad-CAM"
    body, shown = [], 0
    for label, folder in folders:
        entries = _cam_entries(folder)
        if not entries:
            body.append(f"<h4>{esc(label)}</h4>"
                        + note(f"{code(str(folder))} holds no PNG panels: run {code(CAM_COMMAND)}."))
            continue
        body.append(f"<h4>{esc(label)} <span class=\"muted\">({code(str(folder))})</span></h4>")
        body.append('<p class="hint">Columns: the tuple\'s magnifications at one physical scale; rows: input, '
                    "low-level (first conv) and high-level (last block) Grad-CAM of the explained class.</p>")
        for png, caption in entries[:MAX_CAMS]:
            body.append(figure(image(png, f"Grad-CAM panel {png.name}"), caption))
            shown += 1
        if len(entries) > MAX_CAMS:
            body.append(f'<p class="hint">{len(entries) - MAX_CAMS} more panels in {code(str(folder))} are not '
                        "shown.</p>")
    if not shown:
        hint = note(f"no Grad-CAM panels: run {code(CAM_COMMAND)} (or pass {code('--cams DIR')}).")
        return Section("gradcam", title, hint + "".join(body), available=False)
    return Section("gradcam", title, "".join(body))


# ----- similarity -------------------------------------------------------------------------------
def _similarity_table(rows: Sequence[dict[str, str]]) -> str:
    """One line per run and correctness group: total, then count and in-group share per S bin."""
    from histomag.dmsl.explain.similarity_stats import BIN_LABELS

    lines = []
    order: list[tuple[str, str, str]] = []
    counts: dict[tuple[str, str, str], dict[str, tuple[str, str]]] = {}
    for r in rows:
        key = (r.get("run", ""), r.get("mode", ""), r.get("correctness", ""))
        if key not in counts:
            order.append(key)
            counts[key] = {}
        counts[key][r.get("bin", "")] = (r.get("count", ""), r.get("share_in_group", ""))
    for key in order:
        c = counts[key]
        total = c.get("all", ("", ""))[0]
        cells = [esc(key[0]), esc(key[1]), esc(key[2]), esc(total)]
        for b in BIN_LABELS:
            n, share = c.get(b, ("0", "0"))
            try:
                pct = f"{100 * float(share):.1f}%"
            except ValueError:
                pct = "n/a"
            cells.append(f"{esc(n)} <span class=\"muted\">({esc(pct)})</span>")
        lines.append(cells)
    return table(["run", "mode", "classified", "n", *(f"S {b}" for b in BIN_LABELS)], lines, raw=True, numeric_from=3)


def similarity_section(folders: Sequence[tuple[str, Path]]) -> Section:
    """Similarity pies and table of each folder (``(label, folder)``)."""
    from histomag.dmsl.explain.similarity_stats import pie_chart

    title = "Similarity of the magnification branches"
    body, shown = [], 0
    for label, folder in folders:
        csv_path, png_path = folder / "similarity.csv", folder / "similarity_pies.png"
        rows = _read_csv(csv_path) if csv_path.is_file() else []
        if not rows and not png_path.is_file():
            body.append(f"<h4>{esc(label)}</h4>" + note(f"{code(str(folder))} has no similarity.csv: run "
                                                        f"{code(SIMILARITY_COMMAND)}."))
            continue
        shown += 1
        body.append(f"<h4>{esc(label)} <span class=\"muted\">({code(str(folder))})</span></h4>")
        if png_path.is_file():
            png = png_path.read_bytes()
        else:
            with tempfile.TemporaryDirectory() as tmp:
                png = pie_chart(rows, Path(tmp) / "pies.png").read_bytes()
        body.append(figure(image(png, f"similarity pies of {label}"),
                           "Inner ring: correctly / wrongly classified test tuples; outer ring: their similarity "
                           "S = (corr + 1) / 2 of the branches' pooled features, in four bins."))
        if rows:
            body.append(_similarity_table(rows))
    if not shown:
        hint = note(f"no similarity statistics: run {code(SIMILARITY_COMMAND)} (or pass {code('--similarity DIR')}).")
        return Section("similarity", title, hint + "".join(body), available=False)
    return Section("similarity", title, "".join(body))
