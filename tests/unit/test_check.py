"""`keel check`: each kind of project mistake gets one clear message at its file and line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keel.errors import ConfigError, ProjectError
from keel.project.loading import load_project

HEADER = '''
import keel

class PageView(keel.Event):
    user_id: str
    item_id: str

page_views = keel.stream("page_views", PageView, key="user_id")
pv_table = keel.table("page_views")
keel.land(page_views, pv_table)
'''


def make_project(root: Path, body: str) -> Path:
    (root / "proj").mkdir(parents=True, exist_ok=True)
    (root / "keel.toml").write_text('[project]\nname = "t"\nmodule = "proj.decl"\n')
    (root / "proj" / "__init__.py").write_text("")
    (root / "proj" / "decl.py").write_text(HEADER + textwrap.dedent(body))
    return root


def problems_of(root: Path) -> list[str]:
    with pytest.raises(ProjectError) as info:
        load_project(root)
    return [str(p) for p in info.value.problems]


def line_of(root: Path, needle: str) -> int:
    lines = (root / "proj" / "decl.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


def test_a_correct_project_loads(tmp_path: Path) -> None:
    project = load_project(make_project(tmp_path, ""))
    assert set(project.catalog.streams) == {"page_views"}
    assert set(project.catalog.processors) == {"land_page_views"}


def test_unknown_reference_is_reported_at_its_line(tmp_path: Path) -> None:
    root = make_project(tmp_path, '''
    @keel.job(schedule="0 3 * * *", inputs=["no_such_table"], output=keel.table("out"))
    def daily(ctx): return "select 1"
    ''')
    (problem,) = problems_of(root)
    assert "no_such_table" in problem and "not declared" in problem
    assert f"decl.py:{line_of(root, '@keel.job')}" in problem


def test_job_cycle_is_reported(tmp_path: Path) -> None:
    root = make_project(tmp_path, '''
    a = keel.table("a")
    b = keel.table("b")
    @keel.job(schedule="0 3 * * *", inputs=["b"], output=a)
    def make_a(ctx): return "select 1"
    @keel.job(schedule="0 4 * * *", inputs=["a"], output=b)
    def make_b(ctx): return "select 1"
    ''')
    (problem,) = problems_of(root)
    assert "cycle" in problem and "make_a" in problem and "make_b" in problem


def test_bad_schedule_is_reported(tmp_path: Path) -> None:
    root = make_project(tmp_path, '''
    @keel.job(schedule="every day at noon", inputs=["page_views"], output=keel.table("out"))
    def daily(ctx): return "select 1"
    ''')
    (problem,) = problems_of(root)
    assert "bad schedule" in problem and "every day at noon" in problem
    assert f"decl.py:{line_of(root, '@keel.job')}" in problem


def test_bad_schema_is_reported(tmp_path: Path) -> None:
    root = make_project(tmp_path, '''
    class Weird(keel.Event):
        user_id: str
        payload: dict
    weird = keel.stream("weird", Weird, key="nope")
    ''')
    problems = problems_of(root)
    assert len(problems) == 2
    assert any("payload" in p and "cannot be stored" in p for p in problems)
    assert any("key 'nope' is not a field" in p for p in problems)
    assert all(f"decl.py:{line_of(root, 'weird = keel.stream')}" in p for p in problems)


def test_unknown_metric_and_bad_variants(tmp_path: Path) -> None:
    root = make_project(tmp_path, '''
    keel.experiment("solo", variants={"a": 1.0}, unit="user_id", metrics=["nothing"])
    ''')
    problems = problems_of(root)
    assert any("at least two variants" in p for p in problems)
    assert any("metric 'nothing' is not declared" in p for p in problems)


def test_a_misspelled_word_of_a_closed_vocabulary_is_a_problem_at_its_line(tmp_path: Path) -> None:
    root = make_project(tmp_path, '''
    keel.metric("buys", table="page_views", unit="user_id", aggregate="summ")
    @keel.endpoint("FETCH /items/{item_id}")
    def items(req): return {}
    ''')
    problems = problems_of(root)
    assert problems == [
        f"{root}/proj/decl.py:{line_of(root, 'keel.metric')}: metric 'buys': aggregate 'summ' is unknown "
        "(use 'conversion' or 'sum')",
        f"{root}/proj/decl.py:{line_of(root, '@keel.endpoint')}: endpoint 'items': "
        "bad route FETCH '/items/{item_id}' (write it like 'GET /recommend/{user_id}')",
    ]


def test_duplicate_name(tmp_path: Path) -> None:
    root = make_project(tmp_path, 'keel.view("v")\nkeel.view("v")\n')
    (problem,) = problems_of(root)
    assert "declared twice" in problem


def test_error_while_importing_points_at_the_user_line(tmp_path: Path) -> None:
    root = make_project(tmp_path, 'w = keel.tumbling("five minutes")\n')
    (problem,) = problems_of(root)
    assert "bad duration" in problem and f"decl.py:{line_of(root, 'five minutes')}" in problem


def test_unknown_profile_and_missing_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no keel.toml"):
        load_project(tmp_path / "nowhere")
    root = make_project(tmp_path, "")
    with pytest.raises(ConfigError, match="no profile 'staging'"):
        load_project(root, profile="staging")


def test_cli_prints_problems_without_traceback(tmp_path: Path) -> None:
    root = make_project(tmp_path, '''
    @keel.job(schedule="61 * * * *", inputs=["missing"], output=keel.table("out"))
    def daily(ctx): return "select 1"
    ''')
    r = subprocess.run([sys.executable, "-m", "keel.cli.commands", "check", "-p", str(root)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    assert "2 problem(s)" in r.stderr
    assert "bad schedule" in r.stderr and "missing" in r.stderr
