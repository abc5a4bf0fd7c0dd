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
    mag_levels: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 32.0, 40.0)
    mag_regions_um: tuple[float, ...] = (200.0, 400.0)
    mag_regions: int = 8
    mag_epochs: int = 10
    mag_preset: str = "tiny"
    mag_max_crop: int = 128
    snapshot_px: int = 192
    workers: int = 0
    snapshot_mags: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0)
    cams: int = 6
    seed: int = 0
    extra: dict = field(default_factory=dict)


PLANS = {
    "default": DemoPlan(),
    # the paper's backbones and sizes, for a GPU: Inception-v3 on 40x@600 + 20x@300, 5 folds;
    # the magnifier is Hagnifinder's ResNet50 preset on 224 px crops
    "paper": DemoPlan(slides=12, slide_px=8192, tile_px=600, max_tuples=150, backbone="inception_v3", folds=5,
                      epochs=30, batch_size=32, mag_regions_um=(640.0, 1120.0), mag_regions=8, mag_epochs=50,
                      mag_preset="paper", mag_max_crop=500, snapshot_px=512, cams=16, workers=8),
    "quick": DemoPlan(slides=4, slide_px=2048, tile_px=128, max_tuples=40, folds=2, epochs=8, mag_regions=6,
                      mag_epochs=6, cams=2),
}


@dataclass
class DemoResult:
    """What the demo made: paths and the rows of its summary table."""

    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None


def run_demo(out: Path, plan: DemoPlan, *, progress: bool = True) -> DemoResult:
    """Run every stage into ``out`` (reusing finished stages' outputs when re-run)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out)

    with _timed(result, "synthesise cohort"):
        cohort = out / "cohort"
        if not (cohort / "cohort.csv").is_file():
            from histomag.progress import count_progress
            from histomag.synth import make_cohort

            with count_progress(progress, "synthesising slides", plan.slides) as done:
                make_cohort(cohort, n_slides=plan.slides, seed=plan.seed, size_px=plan.slide_px,
                            classes=plan.classes, progress=done)

    with _timed(result, "tile 40x+20x"):
        from histomag.data.sources import expand_slides, find_labels, read_patients_beside
        from histomag.data.folder import TileSettings
        from histomag.tiling.jobs import SlideJob, tile_slides

        slides = expand_slides([cohort])
        patients = read_patients_beside(cohort)
        jobs = [SlideJob(str(p), labels=str(find_labels(p, None)), patient_id=patients.get(p.stem)) for p in slides]
        settings = TileSettings((40.0, 20.0), plan.tile_px, overlap=0.0, max_tuples=plan.max_tuples,
                                seed=plan.seed, placement="random", n_random=plan.max_tuples * 3)
        tiles = out / "tiles"
        tile_results = tile_slides(jobs, settings, tiles, progress=progress)
        n_tuples = sum(r.tuples_written + r.tuples_resumed for r in tile_results)
        log.info("demo: %d tuples from %d slides", n_tuples, len(slides))

    from histomag.dmsl.cv import cross_validate, evaluate_cv_run
    from histomag.dmsl.config import DMSLConfig
    from histomag.dmsl.runfolder import RunFolder

    for mode, mags in plan.modes:
        name = f"{mode}-{'+'.join(f'{m:g}x' for m in mags)}"
        with _timed(result, f"cross-validate {name}", bar=progress):
            run_dir = out / "runs" / name
            config = DMSLConfig(mode=mode, backbone=plan.backbone, magnifications=mags, folds=plan.folds,
                                epochs=plan.epochs, batch_size=plan.batch_size, patience=plan.epochs,
                                seed=plan.seed, num_workers=plan.workers, lr=1e-3)
            if RunFolder(run_dir).metrics_path.is_file():
                cv = evaluate_cv_run(run_dir)
            else:
                cv = cross_validate(tiles, run_dir, config, resume=RunFolder(run_dir).exists(),
                                    progress=False)
            patch = cv.summary["patch"]
            result.rows.append({"task": "DMSL", "run": name, "ACC": _ms(patch["accuracy"]),
                                "F1": _ms(patch["f1"]), "AUC": _ms(patch["auc"])})

    # magnification recovery: train on all slides but the last, predict snapshots of the last
    held_out = slides[-1]
    with _timed(result, "magnification set + regressor"):
        mag_run = _magnification_stage(out, plan, slides[:-1], progress)
    with _timed(result, "predict held-out snapshots", bar=progress):
        result.snapshots = _snapshot_stage(out, plan, held_out, mag_run)
        errs = [abs(r["predicted"] - r["true"]) / r["true"] for r in result.snapshots if r["predicted"]]
        result.rows.append({"task": "magnification", "run": f"{len(result.snapshots)} snapshots of {held_out.stem}",
                            "ACC": f"median rel. error {100 * sorted(errs)[len(errs) // 2]:.0f}%" if errs else "n/a",
                            "F1": "", "AUC": ""})
    with _timed(result, "Grad-CAM + similarity", bar=progress):
        _explain_stage(out, plan, tiles)
    with _timed(result, "HTML report", bar=progress):
        from histomag.report import write_report

        dmsl_runs = [out / "runs" / f"{mode}-{'+'.join(f'{m:g}x' for m in mags)}" for mode, mags in plan.modes]
        result.report = write_report(dmsl_runs + [mag_run], out / "report.html", title="histomag demo",
                                     similarity=[out / "similarity"])
    return result


def _magnification_stage(out: Path, plan: DemoPlan, slides: list[Path], progress: bool) -> Path:
    from histomag.magnification.magset import MagSetSettings, Source, build_magnification_set
    from histomag.magnification.config import preset
    from histomag.magnification.fit import train_magnifier
    from histomag.magnification.runfolder import MagnificationRun

    magset, run = out / "magset", out / "magnifier"
    if not (magset / "manifest.csv").is_file():
        # the held-out slide's snapshots are the test set; one source of the rest validates
        settings = MagSetSettings(magnifications=plan.mag_levels, regions_um=plan.mag_regions_um,
                                  regions_per_size=plan.mag_regions, max_crop=plan.mag_max_crop, min_crop=32,
                                  val_fraction=1 / max(3, len(slides)), test_fraction=0.0, seed=plan.seed)
        build_magnification_set([Source(str(p), p.stem) for p in slides], magset, settings, progress=progress)
    if not MagnificationRun(run).checkpoint_path("best").is_file():
        with _timed(None, "training the magnification regressor", bar=progress):
            train_magnifier(magset, run, preset(plan.mag_preset, epochs=plan.mag_epochs, seed=plan.seed),
                            progress=False)
    from histomag.magnification.metrics import evaluate_run

    evaluate_run(run, magset, "val", progress=False)
    return run


def _snapshot_stage(out: Path, plan: DemoPlan, slide_path: Path, run: Path) -> list[dict[str, Any]]:
    """Save fields of a held-out slide as metadata-free PNG 'snapshots' and recover their magnification."""
    import numpy as np
    from PIL import Image

    from histomag.slide import open_slide
    from histomag.tiling.fields import make_tuple_spec, plan_fields
    from histomag.tissue import tissue_mask
    from histomag.magnification.infer import Estimator, load_magnifier

    folder = out / "snapshots"
    folder.mkdir(exist_ok=True)
    model, config = load_magnifier(run)
    estimator = Estimator(model, config, None, "demo model")
    rows = []
    with open_slide(slide_path) as slide:
        mask = tissue_mask(slide)
        rng = np.random.default_rng(plan.seed)
        for mag in plan.snapshot_mags:
            spec = make_tuple_spec([mag], plan.snapshot_px, "same-fov")
            fields = plan_fields(slide, spec, mask, placement="random", n_random=2, seed=int(rng.integers(1 << 30)),
                                 min_tissue=0.8)
            for i, f in enumerate(fields):
                path = folder / f"{slide.slide_id}_{mag:g}x_{i}.png"
                Image.fromarray(slide.read((f.x, f.y), plan.snapshot_px, magnification=mag)).save(path)
                rec = estimator.estimate_file(path, n_crops=6)
                rows.append({"image": path.name, "true": mag, "predicted": rec["magnification"],
                             "error": rec.get("error", "")})
    return rows


def _explain_stage(out: Path, plan: DemoPlan, tiles: Path) -> None:
    from histomag.dmsl.explain.gradcam import run_cams
    from histomag.dmsl.explain.similarity_stats import write_similarity

    sim_runs = {name: out / "runs" / name for mode, mags in plan.modes if mode in ("sim", "mm")
                for name in [f"{mode}-{'+'.join(f'{m:g}x' for m in mags)}"]}
    sim_run = next((p for n, p in sim_runs.items() if n.startswith("sim")), None)
    if sim_run is not None:
        run_cams(sim_run, tiles, sim_run / "cams", n=plan.cams, cell=192)
    if sim_runs:
        write_similarity(sim_runs, tiles, out / "similarity")


def _ms(stat: dict) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


class _timed:
    """Time a stage; with ``bar`` also show one progress bar for it (for stages without their own)."""

    def __init__(self, result: DemoResult | None, stage: str, bar: bool = False) -> None:
        self.result, self.stage, self.bar = result, stage, bar

    def __enter__(self) -> None:
        from histomag.progress import progress_bar

        self.t = time.perf_counter()
        self._ctx = progress_bar(self.bar)
        self._progress = self._ctx.__enter__()
        if self._progress is not None:
            self._task = self._progress.add_task(self.stage, total=1)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=1)
        self._ctx.__exit__(*exc)
        if self.result is not None:
            self.result.timings[self.stage] = time.perf_counter() - self.t


def plan_for(name: str, **overrides: Any) -> DemoPlan:
    from histomag.errors import ConfigError

    if name not in PLANS:
        raise ConfigError(f"unknown demo preset {name!r}: use one of {', '.join(PLANS)}")
    return replace(PLANS[name], **{k: v for k, v in overrides.items() if v is not None})
