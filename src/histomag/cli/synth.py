"""``histomag synth``: a synthetic H&E cohort of pyramidal slides with label masks."""

from __future__ import annotations

from pathlib import Path

import typer

from histomag.cli.app import app
from histomag.errors import ConfigError


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    slides: int = typer.Option(4, "--slides", "-n", help="Number of slides (one patient each)."),
    seed: int = typer.Option(0, "--seed"),
    size: int = typer.Option(4096, "--size", help="Slide width and height in px at 40x (0.25 µm/px)."),
    classes: str = typer.Option("normal,tumor", "--classes", help="2 or 3 of normal,tumor,lymphoid."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Render physically scaled H&E-like slides (40x, 0.25 µm/px) as pyramidal TIFFs + label masks."""
    from histomag.progress import progress_bar
    from histomag.synth import make_cohort

    names = tuple(c.strip() for c in classes.split(",") if c.strip())
    if slides < 1:
        raise ConfigError(f"--slides {slides}: give at least 1")
    if size < 512:
        raise ConfigError(f"--size {size} is too small: use at least 512 px")
    with progress_bar(not quiet) as bar:
        task = bar.add_task("synthesising slides", total=slides) if bar else None
        records = make_cohort(out, n_slides=slides, seed=seed, size_px=size, classes=names,
                              progress=(lambda n: bar.update(task, completed=n)) if bar else None)
    print(f"wrote {len(records)} slides ({size} x {size} px at 0.25 µm/px, classes {', '.join(names)}) "
          f"-> {out / 'cohort.csv'}")
