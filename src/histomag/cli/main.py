"""The ``histomag`` command: a typer app whose errors become one line and exit code 2."""

from __future__ import annotations

import logging
import sys

import typer

try:  # recent typer vendors click; older releases use click itself
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException as _ClickException  # type: ignore[no-redef]

_Abort = typer.Abort

from histomag.errors import HistomagError

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


def _register() -> None:
    from histomag.cli import audit, demo, dmsl, info, magnification, report, synth, tile  # noqa: F401  (commands register themselves)


def error(message: str) -> None:
    """Print a one-line error on stderr."""
    print(f"error: {message}", file=sys.stderr)


def run(argv: list[str] | None = None) -> int:
    """Run the app and return its exit code; histomag and usage errors become one line on stderr."""
    _register()
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="histomag")
    except HistomagError as exc:
        error(str(exc))
        return exc.exit_code
    except _ClickException as exc:
        error(exc.format_message().replace("\n", " "))
        return exc.exit_code
    except (_Abort, KeyboardInterrupt):
        error("interrupted")
        return 130
    return rv if isinstance(rv, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
