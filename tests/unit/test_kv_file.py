"""The SQLite kv engine's subtle parts: key ranges, expired-row purging by an injected clock, layouts,
threads, forks, bad files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.errors import BackendError, ConfigError
from keel.kv import open_kv
from keel.kv.file import FileKeyValue, _key_range, open_file_kv


def rows_on_disk(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM kv").fetchone()[0])


@pytest.fixture
def kv(tmp_path: Path) -> Iterator[FileKeyValue]:
    store = open_file_kv(f"file://{tmp_path}/kv.db", purge_interval=3600)
    yield store
    store.close()


class Clock:
    """A hand-moved Unix clock for TTLs (no sleeps)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("prefix", "high"),
    [
        ("", None),
        ("a", "b"),
        ("a/", "a0"),
        ("é", "ê"),
        ("\U0010ffff", None),
        ("a\U0010ffff", "b"),
        ("\ud7ff", "\ue000"),  # the next code point UTF-8 can hold: surrogates are skipped
    ],
)
def test_key_range_is_exactly_the_prefix(prefix: str, high: str | None) -> None:
    assert _key_range(prefix) == (prefix, high)


def test_key_range_bounds_every_extension_bytewise() -> None:
    # SQLite compares TEXT keys as UTF-8 bytes: the bounds must hold in that order too.
    for prefix in ["a", "views/", "é", "\U0010ffff", "z\x7f", "\ud7ff"]:
        low, high = _key_range(prefix)
        for tail in ["", "\x00", "z", "\U0010ffff\U0010ffff", "é" * 3]:
            key = (prefix + tail).encode()
            assert low.encode() <= key and (high is None or key < high.encode()), (prefix, tail)
        assert high is None or not high.startswith(prefix)


def test_purge_removes_expired_rows_from_the_file(tmp_path: Path) -> None:
    clock = Clock()
    kv = open_file_kv(f"file://{tmp_path}/kv.db", purge_interval=3600, clock=clock)
    kv.put_many([(f"gone/{i}", b"x") for i in range(25)], ttl=10)
    kv.put_many([("stays", b"x")])
    kv.upsert_many([("stays/versioned", 1, b"x")], ttl=60)
    clock.now += 11
    assert rows_on_disk(kv.path) == 27  # expired rows linger until purged ...
    assert kv.purge_expired() == 25  # ... and purging removes only those
    assert rows_on_disk(kv.path) == 2
    assert kv.get_many(["stays", "stays/versioned"]) == [b"x", b"x"]
    kv.close()


def test_purge_works_in_bounded_batches(tmp_path: Path) -> None:
    clock = Clock()
    kv = open_file_kv(f"file://{tmp_path}/kv.db", purge_batch=7, purge_interval=3600, clock=clock)
    kv.put_many([(f"gone/{i}", b"x") for i in range(30)], ttl=5)
    clock.now += 6
    assert kv.purge_expired() == 30
    assert rows_on_disk(kv.path) == 0
    kv.close()


def test_writes_purge_periodically(tmp_path: Path) -> None:
    clock = Clock()
    kv = open_file_kv(f"file://{tmp_path}/kv.db", purge_interval=100, clock=clock)
    kv.put_many([("first", b"x")])  # the first write purges (nothing yet) and schedules the next purge
    kv.put_many([(f"gone/{i}", b"x") for i in range(10)], ttl=5)
    clock.now += 6
    kv.put_many([("early", b"x")])  # expired, but the purge interval has not passed
    assert rows_on_disk(kv.path) == 12
    clock.now += 100
    kv.put_many([("trigger", b"x")])  # any write past purge_interval purges
    assert rows_on_disk(kv.path) == 3
    kv.close()


def test_expiry_follows_the_injected_clock(tmp_path: Path) -> None:
    clock = Clock()
    kv = open_kv(f"file://{tmp_path}/kv.db", clock=clock)
    kv.put_many([("k", b"v")], ttl=30)
    clock.now += 29.9
    assert kv.get("k") == b"v"
    clock.now += 0.2
    assert kv.get("k") is None and kv.count() == 0
    kv.close()


def test_a_file_in_the_older_blob_layout_is_converted_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "kv.db"
    with sqlite3.connect(path) as db:  # what keel wrote before values were TEXT
        db.execute("CREATE TABLE kv (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL, version INTEGER, "
                   "expires REAL) WITHOUT ROWID")
        db.execute("CREATE INDEX kv_expires ON kv(expires) WHERE expires IS NOT NULL")
        db.executemany("INSERT INTO kv VALUES (?, ?, ?, ?)", [
            ("trending/_top".encode(), b'{"items":[1,2]}', 7, None),
            ("binary".encode(), bytes(range(256)), None, None),
            ("ключ".encode(), b"[]", None, 4_000_000_000.0),
        ])
    db.close()
    kv = open_kv(f"file://{path}")
    try:
        assert kv.get_many(["trending/_top", "binary", "ключ"]) == [b'{"items":[1,2]}', bytes(range(256)), b"[]"]
        assert kv.upsert_many([("trending/_top", 6, b"older")]) == 0  # the version came along
        assert [k for k, _ in kv.scan("")] == ["binary", "trending/_top", "ключ"]
    finally:
        kv.close()
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT value, typeof(key), typeof(value) FROM kv WHERE key = 'trending/_top'").fetchone()
        assert row == ('{"items":[1,2]}', "text", "text")
        assert db.execute("PRAGMA user_version").fetchone() == (2,)
    db.close()


def test_a_file_from_a_newer_keel_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kv.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(BackendError, match="layout 99.*upgrade keel"):
        open_kv(f"file://{path}")


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


_CLOSE_WHILE_BUSY = """
import sys, threading, time
from keel.errors import BackendError
from keel.kv import open_kv

for n in range(int(sys.argv[2])):
    kv = open_kv(f"file://{sys.argv[1]}/kv{n}.db", synchronous="NORMAL")  # no fsync per write: quick rounds
    kv.put_many([("k", b"v")])
    ops, errors = [0] * 6, []

    def worker(i):
        try:
            while True:
                kv.put_many([("w", b"v")]) if i == 0 else kv.get_many(["k", "x"])  # one writer: no lock waits
                ops[i] += 1
        except BackendError as exc:
            if "is closed" not in str(exc):
                errors.append(exc)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    while min(ops) < 20 and all(t.is_alive() for t in threads):
        time.sleep(0.001)  # until every thread is busy reading or writing: then close under them
    kv.close()
    for t in threads:
        t.join()
    assert not errors, errors
print("ok")
"""


def test_closing_while_other_threads_read_and_write_never_crashes(tmp_path: Path) -> None:
    # In a child process: Python's sqlite3 dies of a segfault when a connection is closed under a
    # running statement, which would take pytest down with it.
    done = subprocess.run([sys.executable, "-c", _CLOSE_WHILE_BUSY, str(tmp_path), "30"],
                          capture_output=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == b"ok", done.stderr.decode()[-3000:]
