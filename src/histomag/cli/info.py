"""``histomag info``: what a slide is and at which true resolution it will be read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from histomag.cli.main import app


@app.command()
def info(
    slide: Path = typer.Argument(..., help="Slide or image file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    mpp: float = typer.Option(None, "--mpp", help="Resolution override in µm/px (wins over metadata)."),
    backend: str = typer.Option("auto", "--backend", help="auto, openslide, tiffslide or image."),
    estimate: bool = typer.Option(False, "--estimate", help="Also estimate the magnification from the pixels."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Magnification model for --estimate "
                                              "(default: the model shipped with histomag)."),
    n_crops: int = typer.Option(32, "--n-crops", help="Tissue crops for --estimate (spread over the tissue)."),
) -> None:
    """Dimensions, pyramid levels with downsample and mpp, objective power, vendor and mpp source."""
    from histomag.slide import open_slide

    with open_slide(slide, mpp=mpp, backend=backend) as s:  # type: ignore[arg-type]
        data = s.info()
        if estimate:
            data["estimate"] = _estimate(s, checkpoint, n_crops)  # type: ignore[arg-type]
    if as_json:
        print(json.dumps(data))
        return
    _print_info(data)


def _estimate(slide, checkpoint: Optional[Path], n_crops: int) -> dict:
    from histomag.estimate import disagreement
    from histomag.train.maginfer import load_estimator

    estimator = load_estimator(checkpoint)
    est = estimator.estimate_slide(slide, n_crops)
    return {**est.to_dict(), "iqr": round(est.spread, 3), "model": estimator.source, "text": est.describe(),
            "warning": disagreement(slide, est)}


def _print_info(data: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    mpp = f"{data['mpp']:.4g} µm/px" if data["mpp"] else "[bold red]null — unknown[/]"
    mag = f"{data['magnification']:g}x" if data["magnification"] else "unknown"
    console.print(f"[bold]{data['path']}[/]  ({data['vendor']}, read with {data['backend']})")
    console.print(f"dimensions: {data['dimensions'][0]} x {data['dimensions'][1]} px")
    console.print(f"mpp: {mpp}   objective power: {data['objective_power'] or 'unknown'}   "
                  f"magnification: {mag}   mpp_source: {data['mpp_source']}")
    if data["mpp_source"] == "missing":
        console.print("[yellow]warning: no resolution in the metadata; reads need --mpp MICRONS_PER_PIXEL[/]")
    table = Table("level", "dimensions", "downsample", "mpp", "magnification")
    for lv in data["levels"]:
        table.add_row(str(lv["level"]), f"{lv['dimensions'][0]} x {lv['dimensions'][1]}", f"{lv['downsample']:g}",
                      f"{lv['mpp']:.4g}" if lv["mpp"] else "-", f"{lv['magnification']:g}x" if lv["magnification"] else "-")
    console.print(table)
    est = data.get("estimate")
    if est:
        console.print(f"estimated from pixels ({est['model']}): [bold]{est['text']}[/]; metadata: {mag}")
        if est["warning"]:
            console.print(f"[bold red]warning: {est['warning']}[/]")
