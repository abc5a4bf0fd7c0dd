"""``histomag report``: one self-contained HTML report of DMSL runs, explain outputs and magnification runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from histomag.cli.app import app


@app.command()
def report(
    runs: Optional[list[Path]] = typer.Argument(None, metavar="RUN...", help="Run folders: DMSL (`histomag dmsl "
                                                "train`) and magnification (`histomag magnification train` + "
                                                "`evaluate`) runs, and slide prediction folders (`histomag dmsl "
                                                "predict RUN SLIDE --out DIR`), in any order."),
    out: Path = typer.Option(..., "--out", "-o", help="The HTML file to write."),
    title: Optional[str] = typer.Option(None, "--title", help="Page title (default names the runs)."),
    cams: Optional[list[Path]] = typer.Option(None, "--cams", help="Grad-CAM folder of `histomag dmsl cam` "
                                              "(repeatable; RUN/cams is used too)."),
    similarity: Optional[list[Path]] = typer.Option(None, "--similarity", help="Folder of `histomag dmsl "
                                                    "similarity` (repeatable; RUN/similarity is used too)."),
    predictions: Optional[list[Path]] = typer.Option(None, "--predictions", help="Slide prediction folder of "
                                                     "`histomag dmsl predict RUN SLIDE --out DIR` (repeatable; "
                                                     "RUN/predict is used too)."),
    screenshot: Optional[Path] = typer.Option(None, "--screenshot", help="Also write a PNG of the page's top "
                                              "(needs Chromium)."),
) -> int:
    """Settings, metrics table (mean ± std over folds), ROC, confusion, data fraction, Grad-CAM, similarity, slides, ACC_N."""
    from histomag.errors import ConfigError
    from histomag.report.html import write_report

    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out}: give an .html file")
    if screenshot is not None:
        from histomag.report.screenshot import find_chromium

        if find_chromium() is None:
            raise ConfigError("--screenshot needs Chromium (chromium, chromium-browser or google-chrome on PATH): "
                              "install it or leave out --screenshot")
    path = write_report(runs or [], out, title=title, cams=cams or [], similarity=similarity or [],
                        predictions=predictions or [])
    size = path.stat().st_size
    print(f"report -> {path} ({size / 1e6:.1f} MB)" if size >= 1e6 else f"report -> {path} ({size / 1e3:.0f} kB)")
    if screenshot is not None:
        from histomag.report.screenshot import render_html_to_png

        if not render_html_to_png(path, screenshot):
            raise ConfigError(f"Chromium could not take the screenshot {screenshot} (run with -v to see why); "
                              f"the report itself is written: {path}")
        print(f"screenshot -> {screenshot}")
    return 0
