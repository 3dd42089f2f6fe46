"""A real Apache Airflow 3 for the deploy tests, from its own venv (scripts/install-airflow.sh).

Airflow's pins clash with keel's, so it lives in ``.cache/airflow/venv`` (KEEL_AIRFLOW_VENV overrides the
folder) and the tests drive it from outside: its CLI (``Airflow.cli``) and its python (``Airflow.python``),
each a subprocess with AIRFLOW_HOME in a tmp folder (SQLite metadata DB, examples off, the dags folder
``Airflow.dags``). Every CLI call costs ~5 s of imports, so a module shares one ``airflow`` (module scope)
and its tests keep their calls few. If Airflow is not installed the fixture FAILS, naming the script.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("KEEL_AIRFLOW_VENV", ROOT / ".cache" / "airflow" / "venv"))
INSTALL_HINT = "run `bash scripts/install-airflow.sh` (Airflow 3 into .cache/airflow/venv, ~90 s)"

# Run by Airflow's python: each DAG of a folder as plain data, and each pod task's rendered pod manifest.
_DESCRIBE = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
out = {"import_errors": {str(k): str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    tasks = {}
    for task in dag.tasks:
        info = {"operator": type(task).__name__, "upstream": sorted(task.upstream_task_ids),
                "retries": task.retries, "owner": task.owner}
        if type(task).__name__ == "KubernetesPodOperator":
            from kubernetes.client import ApiClient
            info["pod"] = ApiClient().sanitize_for_serialization(task.build_pod_request_obj(dry_run=True))
        tasks[task.task_id] = info
    out["dags"][dag_id] = {"schedule": dag.schedule, "catchup": dag.catchup, "owner": dag.owner, "tasks": tasks}
with open(sys.argv[2], "w") as f:
    json.dump(out, f)
"""


class Airflow:
    """One AIRFLOW_HOME with a migrated metadata DB, driven through the Airflow venv's subprocesses."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.dags = home / "dags"
        self.dags.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "AIRFLOW_HOME": str(self.home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags)}

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`airflow ARGS...`, its output captured (not checked: the caller asserts on the exit code)."""
        return subprocess.run([str(VENV / "bin" / "airflow"), *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout, cwd=self.home)

    def describe(self, folder: Path) -> dict[str, Any]:
        """The DagBag of `folder` as data: import_errors, and per DAG its schedule, catchup, owner and tasks
        (operator, upstream, retries, owner, and for a pod task its rendered pod manifest)."""
        result_file = self.home / "describe.json"
        r = subprocess.run([str(VENV / "bin" / "python"), "-c", _DESCRIBE, str(folder), str(result_file)],
                           capture_output=True, text=True, env=self.env, timeout=300, cwd=self.home)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        found: dict[str, Any] = json.loads(result_file.read_text())
        return found


def start_airflow(home: Path) -> Airflow:
    if not (VENV / "bin" / "airflow").exists():
        pytest.fail(f"no Airflow in {VENV}: {INSTALL_HINT}")
    airflow = Airflow(home)
    r = airflow.cli("db", "migrate")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return airflow


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    yield start_airflow(tmp_path_factory.mktemp("airflow-home"))
