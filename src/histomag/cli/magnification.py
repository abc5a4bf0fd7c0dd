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


@mag_app.command("train")
def train(
    data: Path = typer.Argument(..., help="Magnification set made by `histomag magnification build`."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, checkpoints, metrics)."),
    preset: str = typer.Option("cpu-small", "--preset", help="paper (ResNet50, GPU), cpu-small (≤ 30 min on "
                               "2 CPU cores) or tiny (seconds)."),
    model: str = typer.Option("regressor", "--model", help="regressor (Hagnifinder) or classifier (4-level baseline)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Override the preset's backbone."),
    weights: Optional[str] = typer.Option(None, "--weights", help="imagenet (local torch cache) or a state-dict file."),
    target: Optional[str] = typer.Option(None, "--target", help="linear (magnification) or log (log-magnification)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    crop: Optional[int] = typer.Option(None, "--crop", help="Random crop side in px (never a resize)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j"),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop training after this long."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train the magnification regressor (Huber loss, AdamW, LR halved on plateau, best-on-val checkpoint)."""
    from histomag.errors import ConfigError
    from histomag.train.magconfig import MODEL_TYPE_CLASSIFIER, MODEL_TYPE_REGRESSOR, preset as make_preset
    from histomag.train.magnification import train_magnifier

    if model not in ("regressor", "classifier"):
        raise ConfigError(f"--model {model!r}: use regressor or classifier")
    overrides = {"backbone": backbone, "weights": weights, "target": target, "epochs": epochs,
                 "batch_size": batch_size, "lr": lr, "crop": crop, "num_workers": workers,
                 "max_time_minutes": max_minutes, "seed": seed,
                 "model_type": MODEL_TYPE_CLASSIFIER if model == "classifier" else MODEL_TYPE_REGRESSOR}
    config = make_preset(preset, **{k: v for k, v in overrides.items() if v is not None})
    run = train_magnifier(data, out, config, progress=not quiet)
    print(f"trained {config.model_type} ({config.backbone}, preset {preset}) -> {run}/checkpoints/best.ckpt")


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
    from histomag.train.magmetrics import evaluate_run

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
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Run folder or .ckpt of a magnification model."),
    n_crops: int = typer.Option(8, "--n-crops", help="Tissue crops per image or slide (median)."),
) -> int:
    """Print one JSON object per image: path, magnification, mpp, n_crops (or an error)."""
    import json

    from histomag.train.maginfer import load_magnifier

    model, config = load_magnifier(checkpoint)
    items = _expand_images(paths)
    failures = 0
    for path in items:
        record = predict_one(path, model, config.crop, n_crops)
        failures += "error" in record
        print(json.dumps(record), flush=True)
    if failures:
        return 2 if failures == len(items) else 1
    return 0


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".svs", ".ndpi", ".mrxs", ".scn"}


def _expand_images(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def make_predictor(model, crop: int):
    """A batch-independent predictor of one magnification per crop."""
    from histomag.train.maginfer import predict_images

    return lambda crops: predict_images(model, crops, crop, n_crops=1)


def predict_one(path: Path, model, crop: int, n_crops: int) -> dict:
    """Estimate one file's magnification; bad input becomes an ``error`` field, never an exception."""
    from histomag.errors import HistomagError
    from histomag.estimate import estimate_magnification
    from histomag.slide import open_slide

    record: dict = {"path": str(path), "magnification": None, "mpp": None, "n_crops": 0}
    try:
        with open_slide(path) as slide:
            note = getattr(slide, "conversion", None)
            if note:
                record["note"] = note
            est = estimate_magnification(slide, make_predictor(model, crop), crop, n_crops)
        record.update(magnification=round(est.magnification, 3), mpp=round(est.mpp, 5), n_crops=est.n_crops)
    except HistomagError as exc:
        record["error"] = str(exc)
    return record
