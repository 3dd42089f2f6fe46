"""The SQLite kv engine's subtle parts: key ranges, expired-row purging, threads, forks, bad files."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from keel.errors import BackendError, ConfigError
from keel.kv import open_kv
from keel.kv.file import FileKeyValue, _key_range, open_file_kv


def rows_on_disk(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM kv").fetchone()[0])


@pytest.fixture
def kv(tmp_path: Path) -> FileKeyValue:
    store = open_file_kv(f"file://{tmp_path}/kv.db", purge_interval=3600)
    yield store  # type: ignore[misc]
    store.close()


@pytest.mark.parametrize(
    ("prefix", "low", "high"),
    [
        ("", b"", None),
        ("a", b"a", b"b"),
        ("a/", b"a/", b"a0"),
        ("é", "é".encode(), b"\xc3\xaa"),
        ("\U0010ffff", "\U0010ffff".encode(), b"\xf4\x8f\xbf\xc0"),
    ],
)
def test_key_range_is_exactly_the_prefix(prefix: str, low: bytes, high: bytes | None) -> None:
    assert _key_range(prefix) == (low, high)


def test_key_range_bounds_every_extension() -> None:
    for prefix in ["a", "views/", "é", "\U0010ffff", "z\x7f"]:
        low, high = _key_range(prefix)
        for tail in ["", "\x00", "z", "\U0010ffff\U0010ffff", "é" * 3]:
            key = (prefix + tail).encode()
            assert low <= key and (high is None or key < high), (prefix, tail)
        assert high is None or not (prefix + "x").encode().startswith(high)


def test_purge_removes_expired_rows_from_the_file(kv: FileKeyValue) -> None:
    kv.put_many([(f"gone/{i}", b"x") for i in range(25)], ttl=0.1)
    kv.put_many([("stays", b"x")])
    kv.upsert_many([("stays/versioned", 1, b"x")], ttl=60)
    time.sleep(0.3)
    assert rows_on_disk(kv.path) == 27  # expired rows linger until purged ...
    assert kv.purge_expired() == 25  # ... and purging removes only those
    assert rows_on_disk(kv.path) == 2
    assert kv.get_many(["stays", "stays/versioned"]) == [b"x", b"x"]


def test_purge_works_in_bounded_batches(tmp_path: Path) -> None:
    kv = open_file_kv(f"file://{tmp_path}/kv.db", purge_batch=7, purge_interval=3600)
    kv.put_many([(f"gone/{i}", b"x") for i in range(30)], ttl=0.05)
    time.sleep(0.2)
    assert kv.purge_expired() == 30
    assert rows_on_disk(kv.path) == 0
    kv.close()


def test_writes_purge_periodically(tmp_path: Path) -> None:
    kv = open_file_kv(f"file://{tmp_path}/kv.db", purge_interval=0)
    kv.put_many([(f"gone/{i}", b"x") for i in range(10)], ttl=0.05)
    time.sleep(0.2)
    kv.put_many([("trigger", b"x")])  # any write past purge_interval purges
    assert rows_on_disk(kv.path) == 1
    kv.close()


def test_each_thread_gets_its_own_connection_and_close_closes_all(kv: FileKeyValue) -> None:
    kv.put_many([("k", b"v")])
    seen: list[bytes | None] = []
    threads = [threading.Thread(target=lambda: seen.append(kv.get("k"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [b"v"] * 3
    assert len(kv._connections) == 4
    kv.close()
    with pytest.raises(BackendError, match="is closed: open it again"):
        kv.get("k")
    with pytest.raises(BackendError, match="is closed: open it again"):
        kv.put_many([("k", b"v")])


def test_a_forked_child_opens_its_own_connection(kv: FileKeyValue) -> None:
    kv.put_many([("k", b"parent")])
    pid = os.fork()
    if pid == 0:  # child: SQLite forbids using the parent's connection here
        code = 3
        try:
            if kv._connections == []:  # the parent's were forgotten at fork
                code = 0 if kv.get("k") == b"parent" and len(kv._connections) == 1 else 1
                kv.put_many([("k", b"child")])
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert kv.get("k") == b"child"


def test_opening_a_file_that_is_not_a_database_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "kv.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BackendError, match="not a keel kv database"):
        open_kv(f"file://{path}")


def test_bad_options_and_urls_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="synchronous"):
        open_kv(f"file://{tmp_path}/kv.db", synchronous="SOMETIMES")
    with pytest.raises(ConfigError):
        open_file_kv("redis://localhost/0")


def test_a_writer_holding_the_lock_makes_others_wait_then_fail_clearly(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/kv.db"
    kv = open_file_kv(url, busy_timeout=0.2)
    blocker = sqlite3.connect(tmp_path / "kv.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process's long write transaction
    try:
        assert kv.get("k") is None  # readers are not blocked by a writer (WAL)
        with pytest.raises(BackendError, match="busy_timeout"):
            kv.put_many([("k", b"v")])
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    kv.put_many([("k", b"v")])
    assert kv.get("k") == b"v"
    kv.close()
