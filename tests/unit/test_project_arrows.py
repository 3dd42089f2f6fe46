"""`keel.project` is the vocabulary every component reads, so it imports none of them."""

from __future__ import annotations

import ast
from pathlib import Path

import keel.project

ALLOWED = ("keel.project", "keel.errors", "keel.schemes")


def test_the_project_package_imports_only_errors_schemes_and_itself() -> None:
    found = []
    for path in sorted(Path(keel.project.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [(path.name, n) for n in names
                      if n.split(".")[0] == "keel" and not any(n == a or n.startswith(a + ".") for a in ALLOWED)]
    assert found == []
