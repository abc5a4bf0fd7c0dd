"""The cohort resolution audit as one self-contained HTML page (the rows come from :mod:`histomag.magnification.audit`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from histomag.magnification.audit import THUMB_SIDE
from histomag.report.html import page
from histomag.report.markup import esc, image, table
from histomag.report.sections import Section


def render_audit(rows: Sequence[dict[str, Any]], thumbs: Sequence[bytes | None], model: str) -> str:
    """The audit as one self-contained HTML page."""
    colour = {"ok": "#1a7f37", "likely wrong": "#b35900", "missing": "#8250df", "error": "#cf222e"}
    cells = []
    for row, thumb in zip(rows, thumbs):
        v = row["verdict"]
        interval = (f"{row['mpp_low']:.3g}–{row['mpp_high']:.3g} µm/px ({10 / row['mpp_high']:.3g}–{10 / row['mpp_low']:.3g}x)"
                    if row.get("mpp_low") not in ("", None) else "—")
        meta = (f"{row['metadata_mpp']:.4g} µm/px = {10 / row['metadata_mpp']:.3g}x ({row.get('mpp_source', '')})"
                if row.get("metadata_mpp") not in ("", None) else row.get("mpp_source", "") or "—")
        est = (f"{row['estimated_mpp']:.4g} µm/px = {10 / row['estimated_mpp']:.3g}x"
               if row.get("estimated_mpp") not in ("", None) else "—")
        if row.get("objective") not in ("", None):
            est += f"; objective {row['objective']:g}x (p = {row['objective_p']:.2f})"
        cells.append([
            image(thumb, Path(row["path"]).name, max_width=THUMB_SIDE) if thumb else "",
            esc(Path(row["path"]).name),
            f'<b style="color:{colour.get(v, "#000")}">{esc(v)}</b><br>{esc(row.get("message", "") or row.get("error", ""))}',
            esc(meta),
            esc(est),
            esc(interval),
            esc(row.get("caveat", "")) + (f' <a href="{esc(row["evidence"])}">what was measured</a>'
                                          if row.get("evidence") else "")
            + (f' <a href="{esc(row["overlay"])}">tissue and fields measured</a>' if row.get("overlay") else ""),
        ])
    counts = {v: sum(r["verdict"] == v for r in rows) for v in colour}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    body = (f"<p>{len(rows)} files: {esc(summary)}. Estimates by the {esc(model)}; a verdict of "
            "<i>likely wrong</i> means the metadata lies outside the estimate's calibrated interval.</p>"
            + table(["thumbnail", "file", "verdict", "metadata", "estimated", "interval", "caveat"],
                    cells, raw=True))
    return page("histomag resolution audit", [Section("audit", "Resolution per file", body)], subtitle=summary)
