"""Imports point down the floors docs/architecture.md draws, the two features never import each other, the library
never imports the CLI, and no command module imports another command."""

from __future__ import annotations

import ast
from pathlib import Path

import histomag

PACKAGE = Path(histomag.__file__).parent
#: cli modules any command may import: the app (imports no command) and the shared option parsers
CLI_SHARED = {"histomag.cli.app", "histomag.cli.options"}
#: the floors of docs/architecture.md, bottom up: a module may import its own floor and the ones below
FLOORS: dict[str, tuple[str, ...]] = {
    "base": ("histomag", "histomag.resolution", "histomag.errors", "histomag.progress", "histomag.registry",
             "histomag.workers"),
    "slide": ("histomag.slide",),
    "core": ("histomag.data", "histomag.tiling", "histomag.annotations", "histomag.tissue", "histomag.fitloop",
             "histomag.backbones", "histomag.cluster", "histomag.synth"),
    "features": ("histomag.dmsl", "histomag.magnification"),
    "top": ("histomag.report", "histomag.demo"),
    "cli": ("histomag.cli", "histomag.__main__"),
}
ORDER = list(FLOORS)
FEATURES = ("histomag.dmsl", "histomag.magnification")


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
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(("histomag", *(parts[:-1] if parts[-1] == "__init__" else parts)))] = p
    return out


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _floor(name: str) -> str | None:
    """The floor of a module (its longest matching prefix), or None for a name outside histomag."""
    best: tuple[int, str] | None = None
    for floor, prefixes in FLOORS.items():
        for prefix in prefixes:
            if _within(name, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), floor)
    return best[1] if best else None


def _histomag_imports(path: Path) -> set[str]:
    return {i for i in _imports(path) if _within(i, "histomag")}


def test_every_module_has_a_floor() -> None:
    assert [name for name in _modules() if name != "histomag" and _floor(name) in (None, "base")
            and not any(name == p for p in FLOORS["base"])] == []


def test_imports_point_down_the_floors() -> None:
    offenders = {}
    for name, path in _modules().items():
        mine = ORDER.index(_floor(name))  # type: ignore[arg-type]
        up = sorted(i for i in _histomag_imports(path) if ORDER.index(_floor(i)) > mine)  # type: ignore[arg-type]
        if up:
            offenders[name] = up
    assert offenders == {}


def test_the_features_never_import_each_other() -> None:
    offenders = {}
    for name, path in _modules().items():
        for mine, other in (FEATURES, FEATURES[::-1]):
            if _within(name, mine):
                bad = sorted(i for i in _histomag_imports(path) if _within(i, other))
                if bad:
                    offenders[name] = bad
    assert offenders == {}


def test_the_floor_test_catches_an_upward_import() -> None:
    assert _floor("histomag.slide.base") == "slide" and _floor("histomag.registry") == "base"
    assert ORDER.index(_floor("histomag.dmsl.fit")) > ORDER.index(_floor("histomag.tiling.jobs"))  # type: ignore[arg-type]
    assert _floor("histomag.report.audit") == "top" and _floor("numpy") is None


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
