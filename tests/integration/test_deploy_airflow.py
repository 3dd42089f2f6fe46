"""`keel deploy airflow` against a real Airflow 3 (tests/harness/airflow.py): the shop's generated DAGs
import cleanly, keep the declarations' schedule, dependencies and retries, run end to end with
`airflow dags test` on the local profile, and render pods that are valid Kubernetes objects.

Airflow CLI calls cost ~5 s each, so the module makes four: db migrate, list-import-errors, dags test,
and one python run describing both DAG folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from keel.lake import open_lake
from keel.project.config import load_config
from keel.project.loading import copy_example
from keel.run.runtime import Runtime
from tests.harness.airflow import Airflow, airflow  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

DAG_ID = "shop_compute_co_views"
VIEWS = pa.table({"user_id": ["u1", "u1", "u2", "u2", "u3"], "item_id": ["i1", "i2", "i1", "i2", "i3"]})


def keel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keel.cli.commands", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=120)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_example(tmp_path_factory.mktemp("deploy") / "shop")
    with (root / "keel.toml").open("a") as toml:  # the production profile's pods
        toml.write('image = "registry.example.com/shop:1.0"\nnamespace = "shop-jobs"\n')
    lake = open_lake(load_config(root).lake)
    lake.create_table("page_views", VIEWS.schema)
    lake.append("page_views", VIEWS)
    return root


@pytest.fixture(scope="module")
def described(airflow: Airflow, shop: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    r = keel("deploy", "airflow", "-p", str(shop), "--out", str(airflow.dags))
    assert r.returncode == 0, r.stdout + r.stderr
    prod = tmp_path_factory.mktemp("prod-dags")
    r = keel("deploy", "airflow", "-p", str(shop), "--profile", "prod", "--out", str(prod))
    assert r.returncode == 0, r.stdout + r.stderr
    return {"local": airflow.describe(airflow.dags), "prod": airflow.describe(prod)}


def test_the_generated_dags_import_with_no_errors(airflow: Airflow, described: dict[str, Any]) -> None:  # noqa: F811
    r = airflow.cli("dags", "list-import-errors", "--local", "-o", "plain")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert described["local"]["import_errors"] == {} and described["prod"]["import_errors"] == {}


def test_the_dag_keeps_the_declared_schedule_dependencies_retries_and_owner(described: dict[str, Any]) -> None:
    for profile, operator in (("local", "BashOperator"), ("prod", "KubernetesPodOperator")):
        dags = described[profile]["dags"]
        assert list(dags) == [DAG_ID]
        dag = dags[DAG_ID]
        assert (dag["schedule"], dag["catchup"], dag["owner"]) == ("0 3 * * *", False, "recs")
        tasks = {task_id: {k: v for k, v in task.items() if k != "pod"} for task_id, task in dag["tasks"].items()}
        assert tasks == {
            "compute_co_views": {"operator": operator, "upstream": [], "retries": 2, "owner": "recs"},
            "compute_similar_items": {"operator": operator, "upstream": ["compute_co_views"], "retries": 2,
                                      "owner": "recs"},
        }


def test_the_rendered_pods_are_valid_kubernetes_objects(described: dict[str, Any]) -> None:
    import kubernetes_validate

    for task_id, task in described["prod"]["dags"][DAG_ID]["tasks"].items():
        pod = task["pod"]
        kubernetes_validate.validate(pod, "1.37.0", strict=True)
        assert pod["metadata"]["namespace"] == "shop-jobs"
        (container,) = pod["spec"]["containers"]
        assert container["image"] == "registry.example.com/shop:1.0"
        assert container["command"] == ["keel"]
        assert container["args"] == ["run", task_id, "--profile", "prod", "--date", "{{ logical_date }}"]


def test_dags_test_runs_the_shops_jobs_end_to_end_into_the_lake(airflow: Airflow, shop: Path,  # noqa: F811
                                                                 described: dict[str, Any]) -> None:
    r = airflow.cli("dags", "test", DAG_ID, "2026-01-01")
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    assert "state=success" in r.stdout + r.stderr, r.stdout[-5000:] + r.stderr[-3000:]
    assert "--date '2026-01-01 00:00:00+00:00'" in r.stdout + r.stderr  # the logical date reached `keel run`
    lake = open_lake(load_config(shop).lake)
    co_views = lake.read("co_views").to_pylist()
    assert sorted((r["item_id"], r["other_item"], r["users"]) for r in co_views) == [("i1", "i2", 2), ("i2", "i1", 2)]
    rt = Runtime.open(shop)  # similar_items is a view: its rows are in the profile's kv
    try:
        assert rt.views.get("similar_items", "i1")["similar"] == ["i2"]
        assert rt.views.get("similar_items", "i2")["similar"] == ["i1"]
    finally:
        rt.close()
