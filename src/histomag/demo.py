"""The main job on built-in data: what ``histomag demo`` (and ``make demo``) runs.

With no data and no network: synthesise a small cohort, tile 40x+20x same-field tuples,
cross-validate ``single`` (each magnification), ``mm`` and ``sim`` with a CPU-sized backbone,
and (as the later stages land) build a magnification set, train the regressor, predict held-out
snapshots, explain, and write the report. Each stage shows a progress bar.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of the demo's stages (``default`` ≤ 10 min and ``quick`` ≤ 2 min on 2 CPU cores)."""

    slides: int = 6
    slide_px: int = 3072
    classes: tuple[str, ...] = ("normal", "tumor")
    tile_px: int = 256  # at 40x; 20x gets half
    max_tuples: int = 60  # per slide
    backbone: str = "tiny"
    folds: int = 3
    epochs: int = 8
    batch_size: int = 16
    modes: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("single", (40.0,)), ("single", (20.0,)), ("mm", (40.0, 20.0)), ("sim", (40.0, 20.0)))
    seed: int = 0
    extra: dict = field(default_factory=dict)


PLANS = {
    "default": DemoPlan(),
    "quick": DemoPlan(slides=4, slide_px=2048, tile_px=160, max_tuples=40, folds=2, epochs=4),
}


@dataclass
class DemoResult:
    """What the demo made: paths and the rows of its summary table."""

    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def run_demo(out: Path, plan: DemoPlan, *, progress: bool = True) -> DemoResult:
    """Run every stage into ``out`` (reusing finished stages' outputs when re-run)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out)

    with _timed(result, "synthesise cohort"):
        cohort = out / "cohort"
        if not (cohort / "cohort.csv").is_file():
            from histomag.progress import progress_bar
            from histomag.synth import make_cohort

            with progress_bar(progress) as bar:
                task = bar.add_task("synthesising slides", total=plan.slides) if bar else None
                make_cohort(cohort, n_slides=plan.slides, seed=plan.seed, size_px=plan.slide_px,
                            classes=plan.classes, progress=(lambda n: bar.advance(task, n)) if bar else None)

    with _timed(result, "tile 40x+20x"):
        from histomag.cli.tile import expand_slides, find_labels, read_patients_beside
        from histomag.data.folder import TileSettings
        from histomag.data.tiler import SlideJob, tile_slides

        slides = expand_slides([cohort])
        patients = read_patients_beside(cohort)
        jobs = [SlideJob(str(p), labels=str(find_labels(p, None)), patient_id=patients.get(p.stem)) for p in slides]
        settings = TileSettings((40.0, 20.0), plan.tile_px, overlap=0.0, max_tuples=plan.max_tuples,
                                seed=plan.seed, placement="random", n_random=plan.max_tuples * 3)
        tiles = out / "tiles"
        tile_results = tile_slides(jobs, settings, tiles, progress=progress)
        n_tuples = sum(r.tuples_written + r.tuples_resumed for r in tile_results)
        log.info("demo: %d tuples from %d slides", n_tuples, len(slides))

    from histomag.train.cv import cross_validate, evaluate_cv_run
    from histomag.train.dmsl import DMSLConfig

    for mode, mags in plan.modes:
        name = f"{mode}-{'+'.join(f'{m:g}x' for m in mags)}"
        with _timed(result, f"cross-validate {name}"):
            run_dir = out / "runs" / name
            config = DMSLConfig(mode=mode, backbone=plan.backbone, magnifications=mags, folds=plan.folds,
                                epochs=plan.epochs, batch_size=plan.batch_size, patience=plan.epochs,
                                seed=plan.seed, num_workers=0, lr=1e-3)
            if (run_dir / "metrics.json").is_file():
                cv = evaluate_cv_run(run_dir)
            else:
                cv = cross_validate(tiles, run_dir, config, resume=(run_dir / "config.json").is_file(),
                                    progress=progress)
            patch = cv.summary["patch"]
            result.rows.append({"task": "DMSL", "run": name, "ACC": _ms(patch["accuracy"]),
                                "F1": _ms(patch["f1"]), "AUC": _ms(patch["auc"])})
    return result


def _ms(stat: dict) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


class _timed:
    def __init__(self, result: DemoResult, stage: str) -> None:
        self.result, self.stage = result, stage

    def __enter__(self) -> None:
        self.t = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.result.timings[self.stage] = time.perf_counter() - self.t


def plan_for(name: str, **overrides: Any) -> DemoPlan:
    from histomag.errors import ConfigError

    if name not in PLANS:
        raise ConfigError(f"unknown demo preset {name!r}: use one of {', '.join(PLANS)}")
    return replace(PLANS[name], **{k: v for k, v in overrides.items() if v is not None})
