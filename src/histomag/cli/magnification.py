"""``histomag magnification``: build a magnification set, train/evaluate the regressor, predict."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from histomag.cli.main import app, error

mag_app = typer.Typer(help="Magnification recovery (Hagnifinder): build, train, evaluate, predict.",
                      no_args_is_help=True)
app.add_typer(mag_app, name="magnification")


def _mag_range(text: str) -> tuple[float, ...]:
    """``"1-40"`` -> 1..40; ``"4,10,20,40"`` -> those."""
    from histomag.errors import ConfigError
    from histomag.resolution import parse_magnifications

    if "-" in text and "," not in text:
        lo, _, hi = text.partition("-")
        try:
            a, b = int(float(lo)), int(float(hi))
        except ValueError:
            raise ConfigError(f"cannot read magnification range {text!r}: write e.g. --mags 1-40") from None
        if not 1 <= a <= b:
            raise ConfigError(f"magnification range {text!r} must be increasing and ≥ 1: e.g. --mags 1-40")
        return tuple(float(m) for m in range(a, b + 1))
    return tuple(sorted(parse_magnifications(text)))


@mag_app.command("build")
def build(
    sources: list[Path] = typer.Argument(..., help="Slides/images of known resolution, or index CSVs "
                                         "(image, organ, magnification, mpp)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    mags: str = typer.Option("1-40", "--mags", help="Range (1-40) or list (4,10,20,40) of magnifications."),
    regions_um: str = typer.Option("640,1120,2240", "--regions-um",
                                   help="Region sizes in µm (the paper's 2560/4480/8960 px at 40x)."),
    regions_per_size: int = typer.Option(2, "--regions-per-size", help="Regions of each size per source."),
    max_crop: int = typer.Option(500, "--max-crop", help="Largest crop side in px."),
    min_crop: int = typer.Option(32, "--min-crop", help="Smaller crops are not written."),
    max_background: float = typer.Option(0.4, "--max-background", help="Drop crops with more background."),
    val_fraction: float = typer.Option(0.15, "--val-fraction"),
    test_fraction: float = typer.Option(0.15, "--test-fraction"),
    mpp: Optional[float] = typer.Option(None, "--mpp", help="Resolution override for slides/images given directly."),
    seed: int = typer.Option(0, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> int:
    """Cut regions at native resolution and downsample them to every magnification (Hagni40 recipe)."""
    from histomag.data.magset import MagSetSettings, build_magnification_set, collect_sources

    settings = MagSetSettings(
        magnifications=_mag_range(mags),
        regions_um=tuple(float(v) for v in regions_um.split(",") if v.strip()),
        regions_per_size=regions_per_size, max_crop=max_crop, min_crop=min_crop,
        max_background=max_background, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    n, infos = build_magnification_set(collect_sources(sources, mpp), out, settings, progress=not quiet)
    failed = [i for i in infos if i["status"] != "ok"]
    for i in failed:
        error(i["error"])
    by_split = {s: sum(i["crops"] for i in infos if i["split"] == s) for s in ("train", "val", "test")}
    print(f"{n} crops from {len(infos) - len(failed)} of {len(infos)} sources "
          f"(train {by_split['train']}, val {by_split['val']}, test {by_split['test']}) -> {out / 'manifest.csv'}")
    return (2 if len(failed) == len(infos) else 1) if failed else 0
