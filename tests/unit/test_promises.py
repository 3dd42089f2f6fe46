"""docs/promises.md names the tests that hold each promise: every one it names must exist, so the
table cannot drift from the suite (a renamed or deleted test fails here, not silently)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def named_tests() -> list[tuple[str, str | None]]:
    """(test file, test name or None) for each `tests/...py[::name]` in the table; a bare `::name`
    after a path refers to the same file."""
    out: list[tuple[str, str | None]] = []
    for line in (ROOT / "docs" / "promises.md").read_text().splitlines():
        if not line.startswith("| **"):
            continue
        current: str | None = None
        for path, name, bare in re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`::(\w+)`", line):
            if path:
                current = path
                out.append((path, name or None))
            else:
                assert current is not None, f"`::{bare}` before any test file in: {line[:80]}"
                out.append((current, bare))
    return out


def test_every_test_the_promises_name_exists() -> None:
    named = named_tests()
    assert len(named) > 40  # the table was read, not skipped
    missing = []
    for path, name in named:
        file = ROOT / path
        if not file.exists():
            missing.append(path)
            continue
        if name is not None:
            defined = {n.name for n in ast.walk(ast.parse(file.read_text()))
                       if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
            if name not in defined:
                missing.append(f"{path}::{name}")
    assert not missing, f"docs/promises.md names tests that do not exist: {missing}"
