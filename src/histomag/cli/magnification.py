"""``histomag magnification``: build a magnification set, train/evaluate the regressor, predict."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from histomag.cli.app import app, error

PATIENCE_HELP = "Epochs without validation improvement before the learning rate is halved (preset's default)."

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
    from histomag.magnification.magset import MagSetSettings, build_magnification_set, collect_sources

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


def _acquisition(text: str):
    """``full``, ``off`` or ``no-PART`` (e.g. ``no-jpeg``) -> AcquisitionSettings."""
    from histomag.magnification.acquisition import AcquisitionSettings
    from histomag.errors import ConfigError

    if text == "full":
        return AcquisitionSettings()
    if text == "off":
        return AcquisitionSettings.off()
    if text.startswith("no-"):
        return AcquisitionSettings().without(text[3:])
    raise ConfigError(f"--acquisition {text!r}: use full, off or no-PART (kernel, blur, sharpen, noise, jpeg, stain)")


def _training(acquisition: str, epoch_size: int):
    """Online sampling settings; validation crops are an eighth of an epoch (32 to 256)."""
    from histomag.errors import ConfigError
    from histomag.magnification.cv import SourceTraining

    if epoch_size < 8:
        raise ConfigError(f"--epoch-size {epoch_size}: draw at least 8 crops per epoch")
    return SourceTraining(settings=_acquisition(acquisition), epoch_size=epoch_size,
                          val_size=max(32, min(256, epoch_size // 8)))


def _is_magset(paths: list[Path]) -> bool:
    return len(paths) == 1 and paths[0].is_dir() and (paths[0] / "manifest.csv").is_file()


def _load_real_sources(paths: list[Path], quiet: bool):
    from histomag.cli.app import error as say_error
    from histomag.magnification.sources import collect_entries, load_sources
    from histomag.errors import DatasetError

    sources, errors = load_sources(collect_entries(paths), progress=not quiet)
    for message in errors:
        say_error(message)
    if not sources:
        raise DatasetError("no usable source: every image or slide failed to load (see above)")
    return sources


@mag_app.command("train")
def train(
    data: list[Path] = typer.Argument(..., help="A magnification set (`histomag magnification build`), or index "
                                      "CSVs / slides of known resolution to draw crops from online."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, checkpoints, metrics)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="real-small (default for sources), cpu-small "
                                         "(default for a set), paper (ResNet50, GPU) or tiny (seconds)."),
    model: str = typer.Option("regressor", "--model", help="regressor (Hagnifinder) or classifier (4-level baseline)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Override the preset's backbone."),
    weights: Optional[str] = typer.Option(None, "--weights", help="imagenet (local torch cache) or a state-dict file."),
    target: Optional[str] = typer.Option(None, "--target", help="linear (magnification) or log (log-magnification)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    patience: Optional[int] = typer.Option(None, "--patience", help=PATIENCE_HELP),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    crop: Optional[int] = typer.Option(None, "--crop", help="Random crop side in px (never a resize)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j"),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop training after this long."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    acquisition: str = typer.Option("full", "--acquisition", help="Sources only: full, off, or no-PART "
                                    "(kernel, blur, sharpen, noise, jpeg, stain) for ablations."),
    epoch_size: int = typer.Option(3072, "--epoch-size", help="Sources only: crops drawn per epoch."),
    devices: str = typer.Option("1", "--devices", help="Lightning devices: a count, auto, or ids like 0,1 (with "
                                "--strategy ddp, one process each, on CPUs too; --batch-size is per process)."),
    num_nodes: int = typer.Option(1, "--num-nodes", help="Nodes for multi-node training (docs/cohort.md)."),
    strategy: str = typer.Option("auto", "--strategy", help="Lightning strategy (auto, ddp, ...)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train the magnification regressor (Huber loss, AdamW, LR halved on plateau, best-on-val checkpoint)."""
    from histomag.errors import ConfigError
    from histomag.magnification.config import MODEL_TYPE_CLASSIFIER, MODEL_TYPE_REGRESSOR, preset as make_preset
    from histomag.magnification.fit import train_magnifier

    if model not in ("regressor", "classifier"):
        raise ConfigError(f"--model {model!r}: use regressor or classifier")
    on_set = _is_magset(data)
    overrides = {"backbone": backbone, "weights": weights, "target": target, "epochs": epochs, "patience": patience,
                 "batch_size": batch_size, "lr": lr, "crop": crop, "num_workers": workers,
                 "max_time_minutes": max_minutes, "seed": seed,
                 "devices": int(devices) if devices.strip().isdigit() else devices.strip(),
                 "num_nodes": num_nodes if num_nodes != 1 else None, "strategy": strategy if strategy != "auto" else None,
                 "model_type": MODEL_TYPE_CLASSIFIER if model == "classifier" else MODEL_TYPE_REGRESSOR}
    name = preset or ("cpu-small" if on_set else "real-small")
    config = make_preset(name, **{k: v for k, v in overrides.items() if v is not None})
    if on_set:
        run = train_magnifier(data[0], out, config, progress=not quiet)
    else:
        from histomag.magnification.cv import train_on_sources

        sources = _load_real_sources(data, quiet)
        run = train_on_sources(sources, out, config, progress=not quiet,
                               training=_training(acquisition, epoch_size))
    from histomag.fitloop import launched_rank_zero

    if launched_rank_zero():  # the other processes of a distributed run trained with it and wrote nothing
        print(f"trained {config.model_type} ({config.backbone}, preset {name}) -> {run}/checkpoints/best.ckpt")


@mag_app.command("cv")
def cv(
    sources: list[Path] = typer.Argument(..., help="Index CSVs / slides of known resolution."),
    out: Path = typer.Option(..., "--out", "-o", help="CV folder (one run per fold, predictions, metrics)."),
    hold_out: Optional[list[str]] = typer.Option(None, "--hold-out", help="Groups held out together in one fold, "
                                                 "comma-separated; repeat per fold (default: one fold per group)."),
    preset: str = typer.Option("real-small", "--preset"),
    acquisition: str = typer.Option("full", "--acquisition", help="full, off, or no-PART (for ablations)."),
    epoch_size: int = typer.Option(3072, "--epoch-size", help="Crops drawn per epoch."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    patience: Optional[int] = typer.Option(None, "--patience", help=PATIENCE_HELP),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Per fold."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the crops drawn and the initial weights "
                                       "(repeat a CV with other seeds to see its noise)."),
    level: float = typer.Option(0.9, "--level", help="Nominal coverage of the calibrated interval."),
    n_crops: int = typer.Option(16, "--n-crops", help="Tissue crops per held-out image."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Leave-groups-out CV: per held-out group relative error, ACC_k, bias, interval coverage."""
    from histomag.magnification.config import preset as make_preset
    from histomag.magnification.cv import cross_validate_sources

    config = make_preset(preset, **{k: v for k, v in {"epochs": epochs, "patience": patience,
                                                      "max_time_minutes": max_minutes, "seed": seed}.items()
                                     if v is not None})
    folds = [[g.strip() for g in f.split(",") if g.strip()] for f in hold_out] if hold_out else None
    summary = cross_validate_sources(_load_real_sources(sources, quiet), out, config, folds=folds, level=level,
                                     training=_training(acquisition, epoch_size),
                                     n_crops=n_crops, progress=not quiet)
    for row in (r for r in summary["metrics"] if r["method"] == summary["method"]):
        print(f"{row['group']:<24} n={row['n']:<4} median rel. error {row['median_rel_error']:.3f}  "
              f"within 10% {row['within_10']:.2f}  bias {row['bias']:+.3f}  coverage {row.get('coverage', 0):.2f}")
    print(f"-> {out / 'metrics_per_group.csv'}; inference {summary['method']}, interval q={summary['interval']['q']:.3g}")


@mag_app.command("export")
def export(
    run: Path = typer.Argument(..., help="Run folder or checkpoint of a magnification model."),
    out: Path = typer.Option(..., "--out", "-o", help="Model file to write (.pt)."),
    cv_dir: Optional[Path] = typer.Option(None, "--cv", help="CV folder whose held-out errors calibrate the interval."),
) -> None:
    """Write a slim model file (weights + config + interval calibration) for predict/info/tile."""
    from histomag.errors import InputPathError
    from histomag.magnification.estimate import IntervalCalibration
    from histomag.magnification.infer import export_model
    from histomag.magnification.cv import read_cv_summary

    calibration = None
    if cv_dir is not None:
        if not (cv_dir / "summary.json").is_file():
            raise InputPathError(f"{cv_dir} is not a CV folder (no summary.json); make one with: "
                                 "histomag magnification cv SOURCES --out DIR")
        summary = read_cv_summary(cv_dir)
        calibration = IntervalCalibration.from_dict(summary["interval"])
        card = {"cv": summary["metrics"], "folds": summary["folds"], "method": summary["method"]}
        tta = summary.get("tta", [1.0])
        method = summary["method"]
        intervals = {k: IntervalCalibration.from_dict(v) for k, v in summary.get("intervals", {}).items()}
    else:
        card, tta, method, intervals = None, [1.0], "cnn", None
    path = export_model(run, out, calibration=calibration, tta=tta, method=method, intervals=intervals, card=card)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)" + ("" if calibration else "; no interval (no --cv)"))


@mag_app.command("evaluate")
def evaluate(
    run: Path = typer.Argument(..., help="Run folder made by `histomag magnification train`."),
    data: Optional[Path] = typer.Argument(None, help="Magnification set (default: the run's own)."),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    n_crops: int = typer.Option(5, "--n-crops", help="Crops per image (median)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write (default RUN/eval)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """ACC_0.5/1/5, relative error, per magnification and organ, confusion matrix, scatter PNG."""
    from histomag.magnification.metrics import evaluate_run

    metrics = evaluate_run(run, data, split, n_crops=n_crops, out_dir=out, progress=not quiet)
    overall = metrics.get("overall", metrics)
    keys = [k for k in ("n", "acc_0.5", "acc_1", "acc_5", "mae", "mre", "within_10pct")
            if k in overall]
    print("  ".join(f"{k}={_fmt(overall[k])}" for k in keys), f"-> {(out or run / 'eval')}")


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


@mag_app.command("predict")
def predict(
    paths: list[Path] = typer.Argument(..., help="Images, folders of images, or slides."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Run folder or model file "
                                              "(default: the model shipped with histomag)."),
    n_crops: Optional[int] = typer.Option(None, "--n-crops", help="At most this many fields (rulers; default 16 per "
                                          "image, 24 per slide) or crops (a network; default 32) per file."),
    same_acquisition: bool = typer.Option(False, "--same-acquisition", help="The files are one acquisition (one "
                                          "scanner or camera setting): also print one estimate pooled over all of "
                                          "them (its path: 'pooled')."),
) -> int:
    """Print one JSON object per image: path, magnification, mpp, interval, objective odds (or an error)."""
    import json

    from histomag.magnification.infer import load_estimator

    estimator = load_estimator(checkpoint)
    from histomag.magnification.sources import expand_image_paths

    items = expand_image_paths(paths)
    failures = 0
    for path in items:
        record = estimator.estimate_file(path, n_crops)
        failures += "error" in record
        print(json.dumps(record), flush=True)
    if same_acquisition:
        if not hasattr(estimator, "estimate_group"):
            raise ConfigError("--same-acquisition pools the rulers' evidence: drop --checkpoint, or give a rulers' "
                              "calibration (.json)")
        pooled, left_out = estimator.estimate_group(items)
        record = {"path": "pooled", "files": len(items) - len(left_out), "left_out": sorted(left_out)}
        record.update(pooled.to_dict() if pooled is not None else {"error": "no file gave evidence to pool"})
        print(json.dumps(record), flush=True)
    if failures:
        return 2 if failures == len(items) else 1
    return 0


@mag_app.command("calibrate")
def calibrate(
    sources: list[Path] = typer.Argument(..., help="Index CSVs, slides or images of known resolution."),
    out: Path = typer.Option(..., "--out", "-o", help="The rulers' calibration to write (.json)."),
    cues: str = typer.Option("nuclei,lymphocytes", "--cues", help="Rulers to cross-validate (comma-separated); "
                             "the CV chooses among their combinations."),
    readings: Optional[Path] = typer.Option(None, "--readings", help="CSV of the field readings: reused when it "
                                            "exists (no measuring), written otherwise."),
    field: int = typer.Option(768, "--field", help="Side in px of the fields measured (the calibration records it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> int:
    """Leave-groups-out CV of the rulers (each dataset held out in turn), the cue set it chooses, and its
    calibration (priors, spreads, interval) written to OUT; the figures go in OUT under "cv"."""
    from histomag.magnification.rulers.cv import calibrate as run

    report = run(sources, out, [c.strip() for c in cues.split(",") if c.strip()], progress=not quiet,
                 readings_csv=readings, field=field)
    for message in report["unreadable"]:
        error(message)
    print(f"{'cues':24s} {'score':>7s} {'answered':>9s}")
    for row in report["scores"]:
        print(f"{row['cues']:24s} {row['score']:7.3f} {row['answered']:9.2f}")
    chosen = "+".join(report["chosen"])
    print(f"chosen: {chosen} (mean over held-out datasets of the median relative mpp error, native images)")
    print(f"{'group':14s} {'n':>4s} {'med.err':>8s} {'w/in10%':>8s} {'bias':>7s} {'p90x':>6s} {'cover':>6s} {'obj.ok':>7s} "
          f"{'served':>7s} {'factor':>7s} {'floor':>6s}")
    for group, f in report["figures"][chosen]["native"].items():
        if "median_rel_error" not in f:
            print(f"{group:14s} {f['n']:4d}  nothing measured")
            continue
        obj = f"{f['objective_right']:.2f}" if "objective_right" in f else "-"
        print(f"{group:14s} {f['n']:4d} {f['median_rel_error']:8.3f} {f['within_10']:8.2f} {f['bias']:+7.3f} "
              f"{f['p90_factor']:6.2f} {f['coverage']:6.2f} {obj:>7s} {f['served']:7.2f} {f['interval_factor']:7.2f} {f['at_floor']:6.2f}")
    for group, err in report["pooled_group_error"].items():
        print(f"pooled estimate of {group}: {err:.3f} from the truth")
    print(f"-> {out}")
    return 0


@mag_app.command("evidence")
def evidence(
    path: Path = typer.Argument(..., help="An image or slide."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default: NAME.evidence.png here)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="A rulers' calibration (.json; default: "
                                               "the one shipped with histomag)."),
) -> int:
    """Show what the rulers measured: the field with the most objects, each object outlined, and their sizes
    in µm at the estimated resolution against each ruler's prior."""
    from histomag.data.atomic import atomic_write_bytes
    from histomag.magnification.rulers.estimator import load_ruler_estimator
    from histomag.report.evidence import evidence_png
    from histomag.slide import open_slide

    estimator = load_ruler_estimator(calibration)
    with open_slide(path) as slide:
        ev = estimator.evidence(slide)
    target = out or Path(f"{path.name.split('.')[0]}.evidence.png")
    atomic_write_bytes(target, evidence_png(ev))
    print(f"{path.name}: {ev.estimate.describe()}")
    for cue, r in ev.readings.items():
        state = f"{r.n} objects, typical {r.size_px:.3g} px" if r.size_px else f"nothing to measure ({r.reason})"
        print(f"  {cue} in the field shown: {state}")
    print(f"-> {target}")
    return 0
