"""The ``histomag`` command: every command registered on the app; errors become one line and exit code 2."""

from __future__ import annotations

import sys

import typer

try:  # recent typer vendors click; older releases use click itself
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException as _ClickException  # type: ignore[no-redef]

from histomag.cli.app import app, error
from histomag.errors import HistomagError, storage_error

_Abort = typer.Abort

__all__ = ["app", "error", "main", "run"]


def _register() -> None:
    from histomag.cli import audit, demo, dmsl, info, magnification, report, synth, tile  # noqa: F401  (commands register themselves)


def run(argv: list[str] | None = None) -> int:
    """Run the app and return its exit code; histomag and usage errors become one line on stderr."""
    _register()
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="histomag")
    except HistomagError as exc:
        error(str(exc))
        return exc.exit_code
    except (FileExistsError, NotADirectoryError) as exc:  # an output path runs into a file
        where = exc.filename or "the output path"
        error(f"cannot create the folder {where}: a file is in the way (an output must be a folder, or a path "
              "under one); choose another output path")
        return 2
    except OSError as exc:  # a full or failing disk outside the library's own writers (Lightning's logs, ...)
        err = storage_error(exc, doing="at")
        if err is None:
            raise
        error(str(err))
        return err.exit_code
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
