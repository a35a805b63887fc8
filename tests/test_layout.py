"""The tree reads as the pipeline: subpackages with a docstring, no import cycles, and only the run layer (and the
sweeper, a Hydra plugin) reads composed configs; the library takes explicit arguments."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "covers"
CONFIG_READERS = ("covers.run", "covers.sweep")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, modules: dict[str, Path] | None = None) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions (``from pkg import mod`` is ``pkg.mod``
    when that is one of ``modules``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules or ())
            names.update(subs or {node.module})
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_every_subpackage_says_what_it_is():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()) == 1, f"{init.parent.name}/__init__.py needs a one-line docstring"


def test_no_import_cycles():
    modules = _modules()
    graph = {m: {i for i in _imports(p, modules) if i in modules and i != m} for m, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in graph[module]:
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*path, module, dep])
            if dep not in state:
                visit(dep, [*path, module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_only_the_run_layer_and_the_sweeper_read_composed_configs():
    config_modules = ("omegaconf", "hydra.core.hydra_config", "hydra.utils")
    readers = {
        m
        for m, p in _modules().items()
        if any(i == c or i.startswith(f"{c}.") for i in _imports(p) for c in config_modules)
    }
    assert readers and all(m.startswith(CONFIG_READERS) for m in readers), sorted(readers)
