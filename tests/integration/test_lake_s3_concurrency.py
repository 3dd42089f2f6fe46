"""The Delta lake on a real S3 API server (moto_server): concurrent writer processes, clear errors.

Writers are separate processes started with `spawn` (deltalake's runtime does not survive fork).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from typing import Any

import pyarrow as pa
import pytest

from keel.errors import BackendError, ConfigError
from keel.lake import open_lake
from tests.harness.s3 import S3Server

pytestmark = pytest.mark.s3

SCHEMA = pa.schema([("worker", pa.int64()), ("batch", pa.int64()), ("row", pa.int64())])


def rows(worker: int, batch: int, n: int) -> pa.Table:
    return pa.table({"worker": [worker] * n, "batch": [batch] * n, "row": list(range(n))}, schema=SCHEMA)


def append_batches(url: str, env: dict[str, str], worker: int, batches: int, n: int) -> None:
    os.environ.update(env)
    lake = open_lake(url)
    for b in range(batches):
        assert lake.append("events", rows(worker, b, n)) is True


def race_one_writer(url: str, env: dict[str, str], worker: int, versions: int, barrier: Any, out: Any) -> None:
    os.environ.update(env)
    lake = open_lake(url)
    lake.describe("events")
    for v in range(1, versions + 1):
        barrier.wait(60)
        out.put((v, worker, lake.append("events", rows(worker, v, 3), writer="sink", version=v,
                                        metadata={"offsets": str(v)})))


def run(processes: list[multiprocessing.process.BaseProcess]) -> None:
    for p in processes:
        p.start()
    for p in processes:
        p.join(180)
    for p in processes:
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0, f"writer process failed with exit code {p.exitcode}"


@pytest.fixture
def lake_url(s3_server: S3Server, s3_env: dict[str, str]) -> str:
    url = s3_server.url()
    open_lake(url).create_table("events", SCHEMA)
    return url


def test_two_processes_appending_concurrently_lose_no_commit(lake_url: str, s3_env: dict[str, str]) -> None:
    ctx = multiprocessing.get_context("spawn")
    batches, n = 12, 50
    run([ctx.Process(target=append_batches, args=(lake_url, s3_env, w, batches, n)) for w in (1, 2)])
    lake = open_lake(lake_url)
    table = lake.read("events")
    assert table.num_rows == 2 * batches * n
    landed = Counter(zip(table.column("worker").to_pylist(), table.column("batch").to_pylist()))
    assert landed == {(w, b): n for w in (1, 2) for b in range(batches)}
    assert lake.describe("events").version == 2 * batches  # one commit per append, none overwritten
    assert [h["operation"] for h in lake.history("events")].count("WRITE") == 2 * batches


def test_two_processes_racing_one_writer_land_each_version_once(lake_url: str, s3_env: dict[str, str]) -> None:
    ctx = multiprocessing.get_context("spawn")
    versions = 6
    barrier, out = ctx.Barrier(2), ctx.Queue()
    run([ctx.Process(target=race_one_writer, args=(lake_url, s3_env, w, versions, barrier, out)) for w in (1, 2)])
    results = [out.get(timeout=10) for _ in range(2 * versions)]
    for v in range(1, versions + 1):
        assert sorted(ok for version, _, ok in results if version == v) == [False, True]
    lake = open_lake(lake_url)
    assert Counter(lake.read("events").column("batch").to_pylist()) == {v: 3 for v in range(1, versions + 1)}
    commit = lake.writer_commit("events", "sink")
    assert commit is not None and (commit.version, commit.metadata) == (versions, {"offsets": str(versions)})


def test_missing_credentials_are_one_config_error(s3_server: S3Server) -> None:
    with pytest.raises(ConfigError, match="no AWS credentials.*AWS_ACCESS_KEY_ID"):
        open_lake(s3_server.url(), env={"AWS_ENDPOINT_URL": s3_server.endpoint})


def test_an_absent_bucket_is_one_backend_error(s3_server: S3Server) -> None:
    with pytest.raises(BackendError, match="bucket 'no-such-bucket' .* does not exist: create it"):
        open_lake("s3://no-such-bucket/lake", env=s3_server.env)


def test_an_unreachable_endpoint_is_one_backend_error(s3_server: S3Server) -> None:
    env = {**s3_server.env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    with pytest.raises(BackendError, match="cannot reach the S3 endpoint"):
        open_lake(s3_server.url(), env=env)


def test_endpoint_url_option_overrides_the_environment(s3_server: S3Server) -> None:
    env = {k: v for k, v in s3_server.env.items() if k != "AWS_ENDPOINT_URL"}
    lake = open_lake(s3_server.url(), env=env, endpoint_url=s3_server.endpoint)
    lake.create_table("t", SCHEMA)
    assert lake.list_tables() == ["t"]
