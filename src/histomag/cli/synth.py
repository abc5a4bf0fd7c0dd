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
    kind: str = typer.Option("slides", "--kind", help="slides (pyramidal TIFFs with label masks) or two-scale "
                             "(images whose four classes need both 40x detail and 20x arrangement; --slides "
                             "patients, --size image side, default 768)."),
    images_per_class: int = typer.Option(2, "--images-per-class", help="two-scale: images per patient and class."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Render physically scaled H&E-like slides (40x, 0.25 µm/px) as pyramidal TIFFs + label masks."""
    from histomag.progress import count_progress
    from histomag.synth import make_cohort

    if kind not in ("slides", "two-scale"):
        raise ConfigError(f"--kind {kind}: use slides or two-scale")
    if kind == "two-scale":
        from histomag.synth.twoscale import CLASSES, make_two_scale_cohort

        side = 768 if size == 4096 else size
        total = slides * images_per_class * len(CLASSES)
        with count_progress(not quiet, "synthesising images", total) as done:
            index = make_two_scale_cohort(out, patients=slides, images_per_class=images_per_class, size=side, seed=seed,
                                          progress=done)
        print(f"wrote {total} images ({side} x {side} px at 0.25 µm/px, {slides} patients, classes "
              f"{', '.join(CLASSES)}) -> {index}")
        return

    names = tuple(c.strip() for c in classes.split(",") if c.strip())
    if slides < 1:
        raise ConfigError(f"--slides {slides}: give at least 1")
    if size < 512:
        raise ConfigError(f"--size {size} is too small: use at least 512 px")
    with count_progress(not quiet, "synthesising slides", slides) as done:
        records = make_cohort(out, n_slides=slides, seed=seed, size_px=size, classes=names, progress=done)
    print(f"wrote {len(records)} slides ({size} x {size} px at 0.25 µm/px, classes {', '.join(names)}) "
          f"-> {out / 'cohort.csv'}")
