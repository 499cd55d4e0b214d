"""The package's layering: every import goes to the same package or a lower layer, no module
imports a command-line module, and there are no import cycles. Read from the source (``ast``),
so it costs nothing and fails on the line that breaks the rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bitlm"

LAYERS = {
    "core": 0,
    "data": 1,
    "model": 1,
    "io": 2,
    "telemetry": 2,
    "objectives": 3,
    "generation": 3,
    "evaluation": 4,
    "training": 5,
    "bench": 6,
    "serve": 6,
    "app": 7,
    "cli": 8,
}
"""Each top-level package of ``bitlm`` and its layer: a module may import its own package and
lower layers only (README, "Layout")."""


def _modules() -> dict[str, Path]:
    return {
        ".".join(("bitlm", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): path
        for path in PACKAGE.rglob("*.py")
    }


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``bitlm`` import in the file (function-local ones too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "bitlm"]


MODULES = _modules()


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def _edges() -> dict[str, set[str]]:
    """Module → the ``bitlm`` modules it imports (a name imported from a package counts as
    that package unless it is a submodule)."""
    return {
        module: {name for _, name in _imports(path) if name in MODULES and name != module}
        for module, path in MODULES.items()
    }


def test_every_top_level_package_has_a_layer():
    packages = {_package(m) for m in MODULES if m != "bitlm"}
    assert packages == set(LAYERS), "add the new package to LAYERS and to the README table"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "bitlm"))
def test_imports_go_down_the_layers(module):
    own = _package(module)
    for line, name in _imports(MODULES[module]):
        if name not in MODULES or name == "bitlm":
            continue
        other = _package(name)
        where = f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports {name}"
        assert other == own or LAYERS[other] < LAYERS[own], f"{where}: {other} is not below {own}"
        assert other != "cli", f"{where}: command-line modules are entry points, not libraries"


def test_no_import_cycles():
    edges = _edges()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for other in sorted(edges[module]):
            visit(other, [*path, module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])


NAMED_AFTER_COMMANDS = ("cli", "bench")
"""Packages whose modules are named after a command (``cli/eval.py`` is ``bitlm-eval``) or a
benchmark (``bench/attention.py`` is ``bitlm-bench attention``), so they repeat the names of
what they run; every other module's name says what it holds, once."""


def test_no_two_library_modules_share_a_name():
    names: dict[str, list[str]] = {}
    for module, path in MODULES.items():
        if _package(module) not in NAMED_AFTER_COMMANDS and path.name != "__init__.py":
            names.setdefault(module.rsplit(".", 1)[-1], []).append(module)
    clashes = {leaf: found for leaf, found in names.items() if len(found) > 1}
    assert not clashes
