"""``histomag demo``: the main job on built-in synthetic data (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from histomag.cli.app import app


@app.command()
def demo(
    out: Path = typer.Option(Path("histomag-demo"), "--out", "-o", help="Output folder (re-running reuses it)."),
    quick: bool = typer.Option(False, "--quick", help="A smaller run (≤ 2 minutes on 2 CPU cores)."),
    preset: str = typer.Option("default", "--preset", help="default (≤ 10 min on 2 CPU cores), quick, or paper "
                               "(Inception-v3 at 600/300 px, ResNet50 magnifier: for a GPU)."),
    seed: int = typer.Option(0, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Synthesise a cohort, tile 40x+20x tuples, cross-validate single/mm/sim, and summarise."""
    from rich.console import Console
    from rich.table import Table

    from histomag.demo import plan_for, run_demo

    plan = plan_for("quick" if quick else preset, seed=seed)
    result = run_demo(out, plan, progress=not quiet)
    console = Console()
    table = Table("task", "run", "ACC", "F1", "AUC", title="histomag demo (patch level, mean ± std over folds)")
    for row in result.rows:
        table.add_row(*(str(row.get(c, "")) for c in ("task", "run", "ACC", "F1", "AUC")))
    console.print(table)
    for stage, seconds in result.timings.items():
        console.print(f"  {stage}: {seconds:.1f} s")
    console.print(f"outputs in {out}")
    console.print(f"report: [bold]{result.report}[/]")
