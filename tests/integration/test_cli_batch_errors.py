"""`keel run` on a Spark profile whose Spark cannot be had: one line naming the extra to install or the
URL to fix, exit 1, no traceback. Neither starts a Spark session: pyspark is absent (shadowed here) in
one, and nothing listens at the master's address in the other (checked before Spark is asked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.process import free_port


def keel(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keel.cli.commands", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **env}, timeout=120)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batch-errors") / "shop"
    assert keel("init", str(root), env={}).returncode == 0
    return root


def failed_with(r: subprocess.CompletedProcess[str], text: str) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    assert text in r.stdout, r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_spark_not_installed_names_the_extra(shop: Path, tmp_path: Path) -> None:
    (tmp_path / "pyspark").mkdir()
    (tmp_path / "pyspark" / "__init__.py").write_text("raise ImportError('no pyspark here')\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    r = keel("run", "compute_co_views", "-p", str(shop), env={"KEEL_BATCH": "spark://local[2]", "PYTHONPATH": path})
    failed_with(r, "pip install 'keel-platform[spark]'")


@pytest.mark.spark
def test_an_unreachable_master_names_the_url(shop: Path) -> None:
    url = f"spark://127.0.0.1:{free_port()}"  # nothing listens there
    r = keel("run", "compute_co_views", "-p", str(shop), env={"KEEL_BATCH": url})
    failed_with(r, f"no Spark master answers at {url!r}")
