"""The imports between keel's packages point the way docs/architecture.md draws them: a package imports
only from its own layer or the layers below, and no two packages import each other. Lazy imports inside
functions count: an import that points up is a cycle waiting for the day someone moves it to the top."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "keel"

# bottom to top, as in docs/architecture.md
LAYERS: list[set[str]] = [
    {"errors", "schemes"},
    {"bus", "lake", "kv"},
    {"project"},
    {"engines"},
    {"streaming", "serve", "jobs", "monitor", "experiments", "batch", "deploy"},
    {"run"},
    {"cli"},
]
LAYER = {package: level for level, packages in enumerate(LAYERS) for package in packages}
EXEMPT = {"__init__", "examples"}  # keel/__init__.py is the public face; the example reads as a user's project


def package_of(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def keel_imports(path: Path) -> set[str]:
    """The keel packages `path` imports, at the top or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names] if node.module == "keel" else [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "keel" and len(parts) > 1:
                out.add(parts[1])
    return out


def edges() -> dict[tuple[str, str], list[str]]:
    """(from package, to package) -> the files that make that import."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        source = package_of(path)
        if source in EXEMPT:
            continue
        for target in keel_imports(path) - {source}:
            found.setdefault((source, target), []).append(str(path.relative_to(SRC)))
    return found


def test_every_package_has_a_layer() -> None:
    packages = {package_of(p) for p in SRC.rglob("*.py")} - EXEMPT
    assert packages - set(LAYER) == set(), "add the new package to LAYERS here and to docs/architecture.md"


def test_no_import_points_up() -> None:
    upward = {f"{a} -> {b}: {', '.join(files)}" for (a, b), files in edges().items()
              if b in LAYER and LAYER[b] > LAYER[a]}
    assert upward == set()


def test_no_two_packages_import_each_other() -> None:
    found = edges()
    mutual = {tuple(sorted((a, b))) for (a, b) in found if (b, a) in found}
    assert mutual == set()


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from keel.run.runtime import Runtime\n    import keel.cli.commands\n")
    assert keel_imports(module) == {"run", "cli"}
