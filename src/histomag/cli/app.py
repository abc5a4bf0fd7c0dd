"""The ``histomag`` typer app and the one-line error printer; it imports no command (they import it)."""

from __future__ import annotations

import logging
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


def error(message: str) -> None:
    """Print a one-line error on stderr."""
    print(f"error: {message}", file=sys.stderr)
