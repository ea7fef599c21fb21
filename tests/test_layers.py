"""Imports go one way: cli -> pipeline -> stages -> launch -> planning -> detect -> core, and the
task depends on the core only.  Read from the sources (every import, also the ones a function
makes late to keep start-up cheap: a late import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bootstrap"

# Lowest first.  A module may import its own layer and the layers below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("bootstrap", "bootstrap.errors", "bootstrap.constants", "bootstrap.dtypes",
              "bootstrap.config", "bootstrap.workspace", "bootstrap.lock", "bootstrap.integrity",
              "bootstrap.logs", "bootstrap.caches")),
    ("task", ("bootstrap.task",)),
    ("detect", ("bootstrap.detect",)),
    ("planning", ("bootstrap.planning",)),
    ("launch", ("bootstrap.launch",)),
    ("stages", ("bootstrap.hub", "bootstrap.train", "bootstrap.evaluate", "bootstrap.export",
                "bootstrap.model_inputs")),
    ("demo", ("bootstrap.demo",)),
    ("pipeline", ("bootstrap.pipeline",)),
    ("cli", ("bootstrap.cli", "bootstrap.render", "bootstrap.__main__")),
]  # fmt: skip
# What each layer may not reach although it sits above it (the task is used everywhere, and
# must stay usable without planning or detection: a user's task is loaded at plan time).
ONLY: dict[str, set[str]] = {"task": {"core", "task"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best = max(
        ((i, prefix) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
         if module == prefix or module.startswith(prefix + ".")),
        key=lambda found: len(found[1]),
    )  # fmt: skip
    return best[0]


def imports_of(path: Path) -> set[str]:
    """Every bootstrap module `path` imports, wherever in the file."""
    found: set[str] = set()
    package = module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("bootstrap")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x: relative to this package
                base = package.rsplit(".", node.level - (path.name == "__init__.py"))[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("bootstrap"):
                found.add(target)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module: str) -> None:
    mine = layer_of(module)
    allowed = ONLY.get(LAYERS[mine][0])
    wrong = []
    for target in sorted(imports_of(MODULES[module])):
        theirs = layer_of(target)
        if theirs > mine or (allowed is not None and LAYERS[theirs][0] not in allowed):
            wrong.append(f"{target} ({LAYERS[theirs][0]})")
    assert not wrong, f"{module} ({LAYERS[mine][0]}) imports upwards: {', '.join(wrong)}"


def test_no_import_cycles_between_packages() -> None:
    """Within a layer the packages may use each other, but never in a circle."""

    def package(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 else module

    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        here = package(module)
        graph.setdefault(here, set()).update(
            package(t) for t in imports_of(path) if package(t) not in (here, "bootstrap")
        )
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in visiting:
            cycle = [*visiting[visiting.index(node) :], node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        visiting.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
