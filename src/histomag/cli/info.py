"""``histomag info``: what a slide is and at which true resolution it will be read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from histomag.cli.app import app


@app.command()
def info(
    slide: Path = typer.Argument(..., help="Slide or image file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    mpp: Optional[str] = typer.Option(None, "--mpp", help="Resolution override in µm/px (wins over metadata); "
                                      "mpp-x,mpp-y (e.g. 0.56,0.42) for pixels that are not square."),
    backend: str = typer.Option("auto", "--backend", help="auto, openslide, tiffslide or image."),
    estimate: bool = typer.Option(False, "--estimate", help="Also estimate the magnification from the pixels."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Magnification model for --estimate "
                                              "(default: the model shipped with histomag)."),
    n_crops: int = typer.Option(32, "--n-crops", help="Tissue crops for --estimate (spread over the tissue)."),
) -> None:
    """Dimensions, pyramid levels with downsample and mpp, objective power, vendor and mpp source."""
    from histomag.resolution import parse_mpp
    from histomag.slide import open_slide

    override = parse_mpp(mpp) if mpp is not None else None
    with open_slide(slide, mpp=override, backend=backend) as s:  # type: ignore[arg-type]
        data = s.info()
        if estimate:
            data["estimate"] = _estimate(s, checkpoint, n_crops)  # type: ignore[arg-type]
    if as_json:
        print(json.dumps(data))
        return
    _print_info(data)


def _estimate(slide, checkpoint: Optional[Path], n_crops: int) -> dict:
    from histomag.magnification.estimate import disagreement
    from histomag.magnification.infer import load_estimator

    estimator = load_estimator(checkpoint)
    est = estimator.estimate_slide(slide, n_crops)
    return {**est.to_dict(), "iqr": round(est.spread, 3), "model": estimator.source, "text": est.describe(),
            "warning": disagreement(slide, est)}


def _print_info(data: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)  # a warning stays one line, however narrow the terminal
    mpp = f"{data['mpp']:.4g} µm/px" if data["mpp"] else "[bold red]null — unknown[/]"
    stated = data.get("metadata_mpp")
    if data["mpp_source"] == "implausible-metadata" and stated is not None:
        shown = f"{stated:.4g}" if isinstance(stated, (int, float)) else " x ".join(f"{v:.4g}" for v in stated)
        mpp = f"[bold red]null — {shown} µm/px stated, implausible[/]"
    mag = f"{data['magnification']:g}x" if data["magnification"] else "unknown"
    console.print(f"[bold]{data['path']}[/]  ({data['vendor']}, read with {data['backend']})")
    dims, file_dims = data["dimensions"], data.get("file_dimensions") or data["dimensions"]
    if not data.get("square_pixels", True):
        console.print(f"dimensions: {dims[0]} x {dims[1]} px in square pixels (the file: {file_dims[0]} x {file_dims[1]})")
        console.print(f"pixels: {data['mpp_x']:.4g} µm wide x {data['mpp_y']:.4g} µm tall, not square: resampled to "
                      f"square {data['mpp']:.4g} µm/px at read time (the finer axis area-averaged)")
    else:
        console.print(f"dimensions: {dims[0]} x {dims[1]} px")
    console.print(f"mpp: {mpp}   objective power: {data['objective_power'] or 'unknown'}   "
                  f"magnification: {mag}   mpp_source: {data['mpp_source']}")
    name = Path(data["path"]).name
    unusable = data["mpp_source"] in ("missing", "implausible-metadata")
    fix = ", so reads need --mpp MICRONS_PER_PIXEL (or --estimate to recover it)" if unusable else ""
    for line in data.get("warnings", []):
        console.print(f"[yellow]warning: {name}: {line}; not used{fix}[/]")
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
