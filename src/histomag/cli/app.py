"""The ``histomag`` typer app, the one-line error printer and the API-to-flag translation; it imports no command
(they import it)."""

from __future__ import annotations

import logging
import re
import sys

import typer

NOISY_LOGGERS = ("tifffile", "tiffslide", "PIL", "py.warnings", "lightning", "pytorch_lightning")

app = typer.Typer(
    name="histomag",
    help="Magnification-aware histopathology: true-resolution reads, multi-magnification tiling, "
    "DMSL and magnification recovery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what is done (levels, resampling).")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    # third-party readers chatter about the files we already report on in one line
    logging.captureWarnings(True)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.CRITICAL)


#: library messages name API parameters (``mpp=0.25``); the CLI names the flag that sets each (``--mpp 0.25``)
PARAMETER_FLAGS = {
    "mpp": "--mpp", "allow_upsample": "--allow-upsample", "tissue_threshold": "--tissue-threshold",
    "magnifications": "--mags", "size": "--size", "overlap": "--overlap", "min_tissue": "--min-tissue",
    "shard": "--shard", "cluster": "--cluster", "labels": "--labels", "labels_dir": "--labels-dir",
    "mode": "--mode", "layout": "--layout", "batch_size": "--batch-size", "lr": "--lr", "sim_warmup": "--sim-warmup",
    "epochs": "--epochs", "patience": "--patience", "folds": "--folds", "fold": "--fold", "n": "--n",
    "val_fraction": "--val-fraction", "test_fraction": "--test-fraction", "train_fraction": "--train-fraction",
    "num_workers": "--workers", "num_nodes": "--num-nodes", "max_tuples": "--max-tuples", "out_dir": "--out",
    "resume": "--resume", "partial": "--partial", "max_uncertainty": "--max-uncertainty",
    "cams": "--cams", "similarity": "--similarity", "predictions": "--predictions", "overlay_width": "--overlay-width",
    "seeds": "--seeds", "n_boot": "--boot", "level": "--level", "branch_ce": "--branch-ce",
    "freeze_backbone": "--freeze-backbone", "cache_features": "--cache-features", "feature_dir": "--feature-dir",
}
#: library hints name the call that makes something (``histomag.dmsl.cv.cross_validate(DATA, RUN, config)``); the CLI
#: names the command instead (``histomag dmsl train DATA --out RUN``); the most specific pattern first
API_COMMANDS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(pattern), command) for pattern, command in (
    (r"histomag\.dmsl\.cv\.cross_validate\(DATA, (.+?), config, resume=True\)", r"histomag dmsl train DATA --out \1 --resume"),
    (r"histomag\.dmsl\.cv\.cross_validate\(DATA, (.+?), config\)", r"histomag dmsl train DATA --out \1"),
    (r"histomag\.dmsl\.cv\.cross_validate\(\.\.\.\)", "`histomag dmsl train`"),
    (r"histomag\.dmsl\.cv\.evaluate_cv_run\((.+?)\)", r"histomag dmsl evaluate \1"),
    (r"histomag\.dmsl\.cv\.predict_slide\(RUN, SLIDE, OUT\)", "histomag dmsl predict RUN SLIDE --out OUT"),
    (r"histomag\.dmsl\.explain\.gradcam\.run_cams\(RUN, DATA, RUN/cams\)", "histomag dmsl cam RUN DATA --out RUN/cams"),
    (r"histomag\.dmsl\.explain\.similarity_stats\.write_similarity\(\{name: RUN\}, DATA, RUN/similarity\)",
     "histomag dmsl similarity RUN [RUN...] DATA --out RUN/similarity"),
    (r"histomag\.magnification\.fit\.train_magnifier\(DATA, (.+?), config\)", r"histomag magnification train DATA --out \1"),
    (r"histomag\.magnification\.metrics\.evaluate_run\((.+?)\)", r"histomag magnification evaluate \1"),
    (r"`histomag\.data\.shards\.start_shard \+ histomag\.tiling\.jobs\.tile_slides` \(out_dir=(.+?), shard=K/N\)",
     r"`histomag tile ... --out \1 --shard K/N`"),
    (r"histomag\.tiling\.jobs\.tile_slides\(jobs, settings, (.+?)\)", r"histomag tile SLIDE... --out \1"),
    (r"`histomag\.data\.shards\.start_shard \+ histomag\.magnification\.audit\.audit_files` \(out_dir=(.+?), shard=K/N\)",
     r"`histomag audit ... --out \1 --shard K/N`"),
    (r"histomag\.magnification\.magset\.build_magnification_set\(sources, (.+?), settings\)",
     r"histomag magnification build SOURCES --out \1"),
    (r"re-run the same histomag\.tiling\.jobs\.tile_slides\(\.\.\.\) call", "re-run the same `histomag tile` command"),
    (r"repeat the same call to resume", "run the same command again to resume"),  # errors.RESUME_HINT
))
_SWITCH = re.compile(r"(?<![\w.])(allow_upsample|resume|partial|freeze_backbone|cache_features)=True\b")
_MAGS = re.compile(r"(?<![\w.])magnifications=\(([^()]*)\)")
_BARE_FLAG = re.compile(r"(--[a-z-]+) (?=[\s),;:.]|$)")
_PARAM = re.compile(r"(?<![\w.])(" + "|".join(sorted(PARAMETER_FLAGS, key=len, reverse=True)) + r")=(?!=)")


def cli_message(message: str) -> str:
    """A library message as the command line says it: ``mpp=0.25`` -> ``--mpp 0.25``,
    ``allow_upsample=True`` -> ``--allow-upsample``, ``magnifications=(40, 20)`` -> ``--mags 40,20``, and a call
    that makes something -> the command that does (:data:`API_COMMANDS`)."""
    for pattern, command in API_COMMANDS:
        message = pattern.sub(command, message)
    message = message.replace("mpp='estimate'", "--mpp estimate").replace("augment=False", "--no-augment")
    message = _SWITCH.sub(lambda m: PARAMETER_FLAGS[m.group(1)], message)
    message = _MAGS.sub(lambda m: "--mags " + ",".join(p.strip() for p in m.group(1).split(",") if p.strip()), message)
    message = _PARAM.sub(lambda m: PARAMETER_FLAGS[m.group(1)] + " ", message)
    return _BARE_FLAG.sub(r"\1", message)  # "labels= takes" -> "--labels takes", "(mpp=)" -> "(--mpp)"


def error(message: str) -> None:
    """Print a one-line error on stderr, in the command line's terms."""
    print(f"error: {cli_message(message)}", file=sys.stderr)
