"""``histomag dmsl``: train DMSL (or a baseline) with patient-grouped cross-validation, evaluate, predict."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from histomag.cli.app import app, error
from histomag.cli.options import CLUSTER_HELP, MAX_UNCERTAINTY_HELP, SAME_ACQUISITION_HELP, TILE_DEFAULT, cluster_client
from histomag.dmsl.config import DMSLConfig
from histomag.errors import ConfigError

#: the training defaults, read from :class:`~histomag.dmsl.config.DMSLConfig` (stated there only; no torch)
DMSL_DEFAULT = DMSLConfig.default
DEFAULT_DMSL_MAGS = ",".join(f"{m:g}" for m in DMSL_DEFAULT("magnifications"))
#: the CLI's own choice, unlike the library's 0 (in-process loading): worker processes read real slides faster
CLI_TRAIN_WORKERS = 2

dmsl_app = typer.Typer(help="DMSL multi-magnification similarity learning: train (grouped k-fold CV), "
                            "evaluate, predict, cam (Grad-CAM), similarity (Eq. 4 statistics).", no_args_is_help=True)
app.add_typer(dmsl_app, name="dmsl")


def _devices(text: str) -> int | str:
    text = text.strip()
    return int(text) if text.isdigit() else text


@dmsl_app.command("train")
def train(
    data: list[Path] = typer.Argument(..., metavar="DATA...", help="A dataset folder made by `histomag tile` "
                                      "(labelled tuples); or slides, folders of them and index CSVs, whose tuples are "
                                      "planned and read while training (no extraction)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, folds/K, metrics, table)."),
    mode: str = typer.Option(DMSL_DEFAULT("mode"), "--mode", help="sim (DMSL), mm (no SIM), single (one magnification), "
                                                   "mscn (context tuples)."),
    backbone: str = typer.Option(DMSL_DEFAULT("backbone"), "--backbone", help="Backbone name (tiny for CPU tests), or timm:NAME for any timm CNN or ViT "
                                                          "(timm:NAME,key=value,... passes constructor arguments)."),
    mags: str = typer.Option(DEFAULT_DMSL_MAGS, "--mags", help="Magnifications, one branch each, e.g. 40,20 (single: 40)."),
    folds: int = typer.Option(DMSL_DEFAULT("folds"), "--folds", help="Patient-grouped cross-validation folds; 1 trains one final "
                       "model on all the data (validation patients carved out for early stopping)."),
    epochs: int = typer.Option(DMSL_DEFAULT("epochs"), "--epochs", help="Maximum epochs per fold."),
    batch_size: int = typer.Option(DMSL_DEFAULT("batch_size"), "--batch-size", help="Tuples per batch (paper: 32)."),
    lr: float = typer.Option(DMSL_DEFAULT("lr"), "--lr", help="Adam learning rate (paper: 1e-3)."),
    alpha: float = typer.Option(DMSL_DEFAULT("alpha"), "--alpha", help="Weight of the cross-entropy term."),
    beta: float = typer.Option(DMSL_DEFAULT("beta"), "--beta", help="Weight of the SIM term (paper: 0.5, with --sim-form paper)."),
    sim_form: str = typer.Option(DMSL_DEFAULT("sim_form"), "--sim-form", help="SIM formula: dist (JS divergence of the maps' spatial "
                                 "distributions), corr (1 - correlation of the maps), l1 (per location) or paper "
                                 "(Eq. 2 as printed)."),
    sim_warmup: int = typer.Option(DMSL_DEFAULT("sim_warmup"), "--sim-warmup", help="Epochs over which the SIM weight rises from 0 to --beta "
                                   "(0: full weight from the start)."),
    select_on: str = typer.Option(DMSL_DEFAULT("select_on"), "--select-on", help="What early stopping and the best checkpoint minimise "
                                  "on the validation patients: loss (alpha*CE + beta*SIM) or ce."),
    weights: str = typer.Option(DMSL_DEFAULT("weights"), "--weights", help="none (random init), imagenet (local cache) or a file."),
    train_fraction: float = typer.Option(DMSL_DEFAULT("train_fraction"), "--train-fraction", help="Share of training tuples used (0.05..1)."),
    val_fraction: float = typer.Option(DMSL_DEFAULT("val_fraction"), "--val-fraction", help="Share of training patients for validation."),
    patience: int = typer.Option(DMSL_DEFAULT("patience"), "--patience", help="Early-stopping patience in epochs."),
    shared_backbone: bool = typer.Option(DMSL_DEFAULT("shared_backbone"), "--shared-backbone", help="One backbone for every magnification."),
    fusion: str = typer.Option(DMSL_DEFAULT("fusion"), "--fusion", help="equal or learned branch weights."),
    no_augment: bool = typer.Option(not DMSL_DEFAULT("augment"), "--no-augment", help="No flips, rotations or colour jitter."),
    workers: int = typer.Option(CLI_TRAIN_WORKERS, "--workers", "-j", help="DataLoader worker processes."),
    devices: str = typer.Option(str(DMSL_DEFAULT("devices")), "--devices", help="Lightning devices: auto, a count, or ids like 0,1."),
    num_nodes: int = typer.Option(DMSL_DEFAULT("num_nodes"), "--num-nodes", help="Nodes for multi-node training."),
    strategy: str = typer.Option(DMSL_DEFAULT("strategy"), "--strategy", help="Lightning strategy (auto, ddp, ...)."),
    precision: Optional[str] = typer.Option(DMSL_DEFAULT("precision"), "--precision", help="Default: 16-mixed on a GPU, else 32-true."),
    max_time: Optional[str] = typer.Option(DMSL_DEFAULT("max_time"), "--max-time", help="Per-fold limit DD:HH:MM:SS."),
    seed: int = typer.Option(DMSL_DEFAULT("seed"), "--seed"),
    seeds: int = typer.Option(1, "--seeds", help="Repeat the cross-validation with this many seeds (--seed, --seed+1, "
                              "...), each in OUT/seed-S; `dmsl compare` pairs two such runs fold by fold."),
    branch_ce: float = typer.Option(DMSL_DEFAULT("branch_ce"), "--branch-ce", help="Weight of each branch's own "
                                    "cross-entropy beside the fused one (deep supervision; 0: the paper's loss)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Named settings: paper (Diao et al.'s exact loss and "
                                         "Inception-v3) or default; flags you set differently from their defaults win."),
    max_tuples: Optional[int] = typer.Option(DMSL_DEFAULT("max_tuples"), "--max-tuples", help="At most this many tuples per slide."),
    freeze_backbone: bool = typer.Option(DMSL_DEFAULT("freeze_backbone"), "--freeze-backbone", help="Keep each branch's "
                                         "pretrained encoder fixed (--weights FILE); train a projection, the heads and "
                                         "the fusion only. See docs/encoders.md."),
    cache_features: bool = typer.Option(DMSL_DEFAULT("cache_features"), "--cache-features", help="With "
                                        "--freeze-backbone and --no-augment: compute each tuple's encoder features once "
                                        "and reuse them in later epochs, folds and modes (DATA/features)."),
    feature_dir: Optional[str] = typer.Option(DMSL_DEFAULT("feature_dir"), "--feature-dir", help="Where --cache-features "
                                              "keeps them (default: DATA/features; for slides, OUT/features)."),
    resume: bool = typer.Option(False, "--resume", help="Continue a run: finished folds are kept, others resume."),
    size: int = typer.Option(TILE_DEFAULT("size"), "--size", help="Slides: pixel size at the highest magnification."),
    labels_dir: Optional[Path] = typer.Option(None, "--labels-dir", help="Slides: folder with <slide>.labels.png "
                                              "or <slide>.geojson (default: beside each slide)."),
    patients: Optional[Path] = typer.Option(None, "--patients", help="Slides: CSV with slide_id,patient_id."),
    group_block: int = typer.Option(10, "--group-block", help="Index CSVs without a group column: images per group."),
    overlap: float = typer.Option(TILE_DEFAULT("overlap"), "--overlap", help="Slides: grid overlap as a share of the field."),
    min_tissue: float = typer.Option(TILE_DEFAULT("min_tissue"), "--min-tissue", help="Slides: minimum tissue share of a field."),
    label_fraction: float = typer.Option(TILE_DEFAULT("label_fraction"), "--label-fraction", help="Slides: share a class must cover."),
    mpp: Optional[str] = typer.Option(None, "--mpp", help="Slides: resolution override in µm/px (mpp-x,mpp-y), or "
                                      "'estimate' to recover each one's from its pixels."),
    mpp_csv: Optional[Path] = typer.Option(None, "--mpp-csv", help="Slides: CSV of per-slide resolutions."),
    max_uncertainty: Optional[float] = typer.Option(None, "--max-uncertainty", help=MAX_UNCERTAINTY_HELP),
    same_acquisition: bool = typer.Option(False, "--same-acquisition", help=SAME_ACQUISITION_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> int:
    """Train on patient-grouped folds; writes RUN/metrics.json, metrics.csv, table.md and table.csv."""
    from histomag.resolution import parse_magnifications
    from histomag.dmsl.cv import cross_validate_seeds
    from histomag.errors import StorageError, storage_error

    given = dict(
        mode=mode, backbone=backbone, weights=weights, magnifications=tuple(parse_magnifications(mags)),
        batch_size=batch_size, lr=lr, alpha=alpha, beta=beta, sim_form=sim_form, sim_warmup=sim_warmup,
        select_on=select_on, epochs=epochs, patience=patience, folds=folds, val_fraction=val_fraction,
        train_fraction=train_fraction, seed=seed, branch_ce=branch_ce,
        num_workers=workers, devices=_devices(devices), num_nodes=num_nodes, strategy=strategy,
        precision=precision, shared_backbone=shared_backbone, fusion=fusion, augment=not no_augment,
        max_time=max_time, max_tuples=max_tuples, freeze_backbone=freeze_backbone, cache_features=cache_features,
        feature_dir=feature_dir)
    if preset is None:
        config = DMSLConfig(**given)
    else:  # the preset's values, except where a flag was set to something other than its default
        changed = {k: v for k, v in given.items() if k == "num_workers" or v != DMSL_DEFAULT(k)}
        config = DMSLConfig.from_preset(preset, **changed)
    source = _training_source(data, config, size=size, labels_dir=labels_dir, patients=patients,
                              group_block=group_block, overlap=overlap, min_tissue=min_tissue,
                              label_fraction=label_fraction, mpp=mpp, mpp_csv=mpp_csv,
                              max_uncertainty=max_uncertainty, same_acquisition=same_acquisition)
    try:
        result = cross_validate_seeds(source, out, config, seeds=seeds, resume=resume, progress=not quiet)
    except (StorageError, OSError) as exc:  # a full disk in our writers or Lightning's logs: resuming needs --resume
        err = storage_error(exc, doing="at", resume="run the same command with --resume (finished folds are kept)")
        if err is None:
            raise
        raise err from None
    if result.table:
        print(result.table, end="")
        print(f"-> {out / 'metrics.json'}, {out / 'table.md'}")
    return 0


def _training_source(data: list[Path], config, *, size: int, labels_dir: Optional[Path], patients: Optional[Path],
                     group_block: int, overlap: float, min_tissue: float, label_fraction: float, mpp: Optional[str],
                     mpp_csv: Optional[Path], max_uncertainty: Optional[float] = None, same_acquisition: bool = False):
    """One dataset folder as it is; anything else becomes a :class:`SlideSource` planned from the slides."""
    import sys

    from histomag.cli.options import resolve_job_mpps
    from histomag.data.folder import TileSettings
    from histomag.data.sources import slide_jobs
    from histomag.data.tuples import SlideSource
    from histomag.errors import InputPathError

    for p in data:
        if not p.exists():
            raise InputPathError(f"{p}: no such dataset folder, slide, folder or index CSV; check the path")
    if len(data) == 1 and data[0].is_dir() and (data[0] / "dataset.json").exists():
        return data[0]
    if any(p.is_dir() and (p / "dataset.json").exists() for p in data):
        raise ConfigError("give one dataset folder, or slides and index CSVs; not both")
    jobs, notes = slide_jobs(data, labels_dir=labels_dir, patients=patients, group_block=group_block)
    for message in notes:
        print(f"note: {message}", file=sys.stderr)
    jobs, failed = resolve_job_mpps(jobs, mpp, mpp_csv, None, max_uncertainty, same_acquisition=same_acquisition)
    if failed:
        raise ConfigError(next(iter(failed.values())))
    if not jobs:
        raise InputPathError(f"no slide or image found in {', '.join(map(str, data))}")
    settings = TileSettings(tuple(config.magnifications), size, mode=config.spec.tuple_mode, overlap=overlap,
                            min_tissue=min_tissue, label_fraction=label_fraction)
    return SlideSource(tuple(jobs), settings)


@dmsl_app.command("evaluate")
def evaluate(
    run: Path = typer.Argument(..., help="Run folder made by `histomag dmsl train`."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> int:
    """Recompute the metrics from the saved predictions (or checkpoints) and print the table."""
    from histomag.dmsl.cv import evaluate_cv_run

    result = evaluate_cv_run(run, progress=not quiet)
    print(result.table, end="")
    return 0


@dmsl_app.command("compare")
def compare(
    run_a: str = typer.Argument(..., metavar="RUN_A", help="Run folder, multi-seed run folder (--seeds), RUN@10x (one head "
                                "of a fused run on its own), or RUN_X+RUN_Y "
                                "(late fusion: the mean of two runs' probabilities)."),
    run_b: str = typer.Argument(..., metavar="RUN_B", help="The same kinds; trained on the same data, seeds and folds."),
    level: str = typer.Option("slide", "--level", help="tuple, slide (a slide's or image's mean probabilities) or patient."),
    metrics: str = typer.Option("auc,accuracy,f1", "--metrics", help="Comma-separated: auc, accuracy, f1."),
    n_boot: int = typer.Option(2000, "--boot", help="Bootstrap draws of test patients (the same draw for both runs)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the comparison as JSON."),
) -> int:
    """Paired difference RUN_A − RUN_B per metric, with a 95% bootstrap interval over test patients."""
    from histomag.data.atomic import atomic_write_json
    from histomag.dmsl.compare import compare_runs

    result = compare_runs(run_a, run_b, level=level, metrics=[m.strip() for m in metrics.split(",") if m.strip()],
                          n_boot=n_boot, seed=seed)
    print(result.table(), end="")
    for m in result.metrics:
        print(m.line(run_a, run_b))
    if json_out is not None:
        atomic_write_json(json_out, result.to_json())
    return 0


@dmsl_app.command("predict")
def predict(
    run: Path = typer.Argument(..., help="Run folder made by `histomag dmsl train`."),
    targets: list[Path] = typer.Argument(..., metavar="TARGET...", help="A dataset folder (histomag tile); one "
                                         "slide or image (tuples + heatmap); or several images, folders of them, or "
                                         "index CSVs (images.csv + tuples.csv)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default RUN/predict)."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Use this fold's model (default: mean of all folds)."),
    mpp: Optional[str] = typer.Option(None, "--mpp", help="Resolution override in µm/px (mpp-x,mpp-y for pixels that "
                                      "are not square), or 'estimate' to recover each image's from its pixels."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Magnification model for --mpp estimate "
                                              "(default: the rulers shipped with histomag; a .json rulers' calibration, cnn, or a network's run folder or model file)."),
    max_uncertainty: Optional[float] = typer.Option(None, "--max-uncertainty", help=MAX_UNCERTAINTY_HELP),
    same_acquisition: bool = typer.Option(False, "--same-acquisition", help=SAME_ACQUISITION_HELP),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    workers: int = typer.Option(0, "--workers", "-j", help="DataLoader worker processes."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Several images: " + CLUSTER_HELP),
    overlay_width: int = typer.Option(1600, "--overlay-width", help="One slide: width in px of SLIDE.overlay.png "
                                      "(predicted class over the tissue, legend, scale bar) and the per-class overlays."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> int:
    """Class probabilities per tuple; a heatmap and overlays for one slide; per image (images.csv) for image collections."""
    from histomag.errors import InputPathError
    from histomag.dmsl.cv import predict_folder, predict_slide

    out_dir = out or run / "predict"
    for target in targets:
        if not target.exists():
            raise InputPathError(f"{target}: no such dataset folder, slide, image or index CSV; check the path")
    first = targets[0]
    single = len(targets) == 1 and (first.is_file() and first.suffix.lower() != ".csv" or first.is_dir() and (
        (first / "manifest.csv").exists() or (first / "dataset.json").exists()))
    if cluster and single:
        raise ConfigError("--cluster spreads several images over a cluster; one slide or one dataset folder runs "
                          "here: drop --cluster")
    if len(targets) == 1 and first.is_dir() and ((first / "manifest.csv").exists() or (first / "dataset.json").exists()):
        if mpp is not None:
            raise ConfigError("--mpp applies to slides and images; a dataset folder was tiled at its resolution")
        path = predict_folder(run, first, out_dir, fold=fold, batch_size=batch_size, num_workers=workers,
                              progress=not quiet)
        print(f"predicted {first} -> {path}")
        return 0
    if len(targets) == 1 and first.is_file() and first.suffix.lower() != ".csv":
        from histomag.cli.options import resolve_mpp

        mpps, failed, sources = resolve_mpp([first], mpp, checkpoint, max_uncertainty)
        if failed:
            raise ConfigError(failed[str(first)])
        paths = predict_slide(run, first, out_dir, fold=fold, mpp=mpps.get(str(first)),
                              mpp_source=sources.get(str(first)), batch_size=batch_size, num_workers=workers,
                              progress=not quiet, overlay_width=overlay_width)
        print(f"predicted {first.name} -> {paths['predictions']}, {paths['npy']}, {paths['png']}, "
              f"{paths['geojson']} (QuPath: File > Import objects), {paths['overlay']} (+ one per class), "
              f"{paths['prediction']} (histomag report --predictions {out_dir})")
        return 0
    with cluster_client(cluster) as client:
        return _predict_images(run, targets, out_dir, fold=fold, mpp=mpp, checkpoint=checkpoint,
                               max_uncertainty=max_uncertainty, same_acquisition=same_acquisition,
                               batch_size=batch_size, workers=workers, quiet=quiet,
                               client=client)


def _predict_images(run: Path, targets: list[Path], out_dir: Path, *, fold: Optional[int], mpp: Optional[str],
                    checkpoint: Optional[Path], max_uncertainty: Optional[float], same_acquisition: bool,
                    batch_size: Optional[int], workers: int,
                    quiet: bool, client: object | None = None) -> int:
    from histomag.cli.options import resolve_job_mpps
    from histomag.data.sources import expand_slides, index_jobs
    from histomag.tiling.jobs import SlideJob
    from histomag.dmsl.predict import predict_images

    jobs, _ = index_jobs([t for t in targets if t.suffix.lower() == ".csv"], group_block=0)
    jobs += [SlideJob(str(p)) for p in expand_slides([t for t in targets if t.suffix.lower() != ".csv"])]
    # an index row's resolution wins over --mpp, which wins over the file's metadata (most specific first);
    # a job whose resolution could not be had stays in the list, to be reported in its images.csv row
    runnable, failed = resolve_job_mpps(jobs, mpp, None, checkpoint, max_uncertainty,
                                        same_acquisition=same_acquisition)
    resolved = {j.path: j for j in runnable}
    jobs = [resolved.get(j.path, j) for j in jobs]
    result = predict_images(run, jobs, out_dir, fold=fold, batch_size=batch_size, num_workers=workers,
                            progress=not quiet, failed=failed, client=client)
    problems = [r.error for r in result.failed]
    for message in problems:
        error(message)
    n_all = len(result.images)
    n_ok = n_all - len(problems)
    acc = result.accuracy()
    scored = f"; accuracy {acc[0]:.3f} on {acc[1]} labelled images" if acc else ""
    where = f" -> {result.images_csv}, {result.tuples_csv}"
    print(f"predicted {n_ok} of {n_all} images ({len(problems)} failed){scored}{where}")
    if problems:
        return 2 if n_ok == 0 else 1
    return 0


@dmsl_app.command("cam")
def cam(
    run: Path = typer.Argument(..., help="Run folder made by `histomag dmsl train`."),
    data: Path = typer.Argument(..., help="The dataset folder the run was trained on."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the PNG panels and cams.csv."),
    n: int = typer.Option(16, "--n", help="Number of test tuples (a mix of correct and wrong predictions)."),
    class_name: Optional[str] = typer.Option(None, "--class", help="Explain this class (default: the prediction)."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Fold whose model and test split are used (default 1)."),
    cell: int = typer.Option(256, "--cell", help="Display height in px of the largest member."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> int:
    """Grad-CAM panels: every magnification x input / low-level / high-level layer, per test tuple."""
    from histomag.dmsl.explain.gradcam import run_cams

    paths = run_cams(run, data, out, n=n, class_name=class_name, fold=fold, cell=cell, progress=not quiet)
    print(f"{len(paths)} Grad-CAM panels -> {out} (index: {out / 'cams.csv'})")
    return 0


@dmsl_app.command("similarity")
def similarity(
    paths: list[Path] = typer.Argument(..., metavar="RUN... DATA", help="RUN [RUN...] DATA: run folders (e.g. with and without SIM), "
                                                 "then the dataset folder they were trained on."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for similarity.csv, scores.csv and the pie chart."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Only this fold's test tuples (default: every fold)."),
    feature: str = typer.Option("pooled", "--feature", help="pooled (Eq. 4 on pooled vectors) or channel-max."),
) -> int:
    """Similarity S = (corr + 1) / 2 of the branches' features, binned for correct and wrong tuples (Fig. 4)."""
    from histomag.errors import ConfigError
    from histomag.dmsl.explain.similarity_stats import write_similarity

    if len(paths) < 2:
        raise ConfigError("give one or more run folders and then the dataset folder: RUN [RUN...] DATA")
    *run_dirs, data = paths
    runs: dict[str, Path] = {}
    for r in run_dirs:
        name = r.resolve().name or str(r)
        while name in runs:
            name += "'"
        runs[name] = r
    written = write_similarity(runs, data, out, fold=fold, feature=feature)
    print((out / "similarity.csv").read_text(), end="")
    print(f"-> {written['table']}, {written['scores']}, {written['png']}")
    return 0
