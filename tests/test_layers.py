"""Imports point down: the library never imports the CLI, and no command module imports another command."""

from __future__ import annotations

import ast
from pathlib import Path

import histomag

PACKAGE = Path(histomag.__file__).parent
#: cli modules any command may import: the app (imports no command) and the shared option parsers
CLI_SHARED = {"histomag.cli.app", "histomag.cli.options"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules() -> dict[str, Path]:
    return {".".join(("histomag", *p.relative_to(PACKAGE).with_suffix("").parts)): p for p in PACKAGE.rglob("*.py")}


def test_the_library_never_imports_the_cli() -> None:
    offenders = {name: sorted(i for i in _imports(path) if i.startswith("histomag.cli"))
                 for name, path in _modules().items()
                 if not name.startswith("histomag.cli") and name != "histomag.__main__"}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_commands_import_only_the_app_and_shared_options() -> None:
    commands = {name: path for name, path in _modules().items()
                if name.startswith("histomag.cli.") and name not in CLI_SHARED | {"histomag.cli.main"}}
    assert "histomag.cli.tile" in commands and "histomag.cli.dmsl" in commands
    offenders = {}
    for name, path in commands.items():
        bad = sorted(i for i in _imports(path) if i.startswith("histomag.cli.") and
                     not any(i == s or i.startswith(s + ".") for s in CLI_SHARED))
        if bad:
            offenders[name] = bad
    assert offenders == {}
    for shared in CLI_SHARED:  # the app and the options import no command either
        assert not [i for i in _imports(_modules()[shared]) if i.startswith("histomag.cli.")
                    and not any(i == s or i.startswith(s + ".") for s in CLI_SHARED)]
