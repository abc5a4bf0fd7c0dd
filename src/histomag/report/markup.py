"""HTML building blocks of the report: escaping, tables, notes, embedded PNG images.

Everything returns HTML text; images become ``data:image/png;base64`` URIs so the report is one
self-contained file. No template engine: the report is small and fixed in shape.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: widest embedded image in px (wider PNGs are downscaled)
MAX_IMAGE_WIDTH = 1200


def esc(value: Any) -> str:
    """HTML-escape ``str(value)`` (quotes too, so the result is safe in attributes)."""
    return html.escape(str(value), quote=True)


def code(text: str) -> str:
    """Inline ``<code>``."""
    return f"<code>{esc(text)}</code>"


def note(text_html: str) -> str:
    """A "not available" box; ``text_html`` is already HTML (use :func:`esc` / :func:`code`)."""
    return f'<p class="note"><strong>Not available:</strong> {text_html}</p>'


def fmt_value(value: Any, digits: int = 3) -> str:
    """A table cell's text: floats to ``digits`` decimals, None/NaN as ``n/a``, lists joined."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt_value(v, digits) if not isinstance(v, float) else f"{v:g}" for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={fmt_value(v, digits)}" for k, v in value.items())
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, css: str = "", numeric_from: int | None = None,
          raw: bool = False, caption: str = "") -> str:
    """A ``<table>`` with a header row.

    Args:
        header: column titles (plain text).
        rows: cell values; formatted with :func:`fmt_value` and escaped, unless ``raw`` (cells
            are HTML already).
        css: extra class names of the table.
        numeric_from: columns from this index on are right-aligned numbers.
        raw: cells are HTML.
        caption: plain-text caption.
    """
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            cls = ' class="num"' if numeric_from is not None and i >= numeric_from else ""
            cells.append(f"<td{cls}>{value if raw else esc(fmt_value(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f'<div class="table-wrap"><table class="{esc(("data " + css).strip())}">{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def downscale_png(data: bytes, max_width: int = MAX_IMAGE_WIDTH) -> tuple[bytes, int, int]:
    """Decode an image, shrink it to at most ``max_width`` px wide, and encode it as PNG.

    Returns:
        ``(png bytes, width, height)``; the input bytes are returned unchanged when they are
        a PNG that is narrow enough.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        width, height = im.size
        if width <= max_width and im.format == "PNG":
            return data, width, height
        if width > max_width:
            height = max(1, round(height * max_width / width))
            width = max_width
            im = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB").resize(
                (width, height), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    return buf.getvalue(), width, height


def image(source: bytes | Path, alt: str, *, max_width: int = MAX_IMAGE_WIDTH, css: str = "") -> str:
    """An ``<img>`` with the PNG embedded as a base64 data URI (downscaled to ``max_width``)."""
    data = Path(source).read_bytes() if isinstance(source, Path) else source
    png, width, height = downscale_png(data, max_width)
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    cls = f' class="{esc(css)}"' if css else ""
    return f'<img{cls} src="{uri}" alt="{esc(alt)}" width="{width}" height="{height}">'


def figure(img_html: str, caption_html: str = "") -> str:
    """A ``<figure>`` around an image with an optional caption (HTML)."""
    cap = f"<figcaption>{caption_html}</figcaption>" if caption_html else ""
    return f"<figure>{img_html}{cap}</figure>"
