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
}
_SWITCH = re.compile(r"(?<![\w.])(allow_upsample|resume|partial)=True\b")
_MAGS = re.compile(r"(?<![\w.])magnifications=\(([^()]*)\)")
_BARE_FLAG = re.compile(r"(--[a-z-]+) (?=[\s),;:.]|$)")
_PARAM = re.compile(r"(?<![\w.])(" + "|".join(sorted(PARAMETER_FLAGS, key=len, reverse=True)) + r")=(?!=)")


def cli_message(message: str) -> str:
    """A library message as the command line says it: ``mpp=0.25`` -> ``--mpp 0.25``,
    ``allow_upsample=True`` -> ``--allow-upsample``, ``magnifications=(40, 20)`` -> ``--mags 40,20``."""
    message = message.replace("mpp='estimate'", "--mpp estimate")
    message = _SWITCH.sub(lambda m: PARAMETER_FLAGS[m.group(1)], message)
    message = _MAGS.sub(lambda m: "--mags " + ",".join(p.strip() for p in m.group(1).split(",") if p.strip()), message)
    message = _PARAM.sub(lambda m: PARAMETER_FLAGS[m.group(1)] + " ", message)
    return _BARE_FLAG.sub(r"\1", message)  # "labels= takes" -> "--labels takes", "(mpp=)" -> "(--mpp)"


def error(message: str) -> None:
    """Print a one-line error on stderr, in the command line's terms."""
    print(f"error: {cli_message(message)}", file=sys.stderr)
