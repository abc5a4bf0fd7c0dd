"""The self-contained HTML report of a project's runs (``histomag report``).

- :mod:`histomag.report.html` — :func:`write_report` / :func:`render_report`: one HTML file with
  settings, the metrics table (mean ± std over folds, Table III layout), ROC curves, confusion
  matrices, the data-fraction curve, Grad-CAM panels, similarity statistics and the
  magnification model's ACC_N tables and scatter plots.
- :mod:`histomag.report.runs` — reading DMSL and magnification run folders (no torch).
- :mod:`histomag.report.sections`, :mod:`~histomag.report.explain`, :mod:`~histomag.report.magnification`
  — the sections; :mod:`histomag.report.markup` — tables, notes and embedded images.
- :mod:`histomag.report.plots` — the matplotlib figures as PNG bytes.
- :mod:`histomag.report.screenshot` — :func:`render_html_to_png` with headless Chromium.

Heavy modules (matplotlib, scikit-learn) are imported inside functions, so importing this
package is cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SECTION_IDS", "render_html_to_png", "render_report", "write_report"]


def __getattr__(name: str) -> Any:  # lazy: `import histomag.report` must not import matplotlib
    if name in ("SECTION_IDS", "render_report", "write_report"):
        from histomag.report import html

        return getattr(html, name)
    if name == "render_html_to_png":
        from histomag.report.screenshot import render_html_to_png

        return render_html_to_png
    raise AttributeError(f"module 'histomag.report' has no attribute {name!r}")
