"""The kv contract (keel.kv.base), one suite run on every engine: file:// (SQLite) and redis://.

TTLs without sleeps: ``expire()`` makes every value written with a TTL so far expire. The file
engine runs on a hand-moved clock, which jumps past the TTL; Redis enforces TTLs with its own
clock, so ``expire()`` first checks the TTL each key holds (PTTL), then asks the server to expire
those keys now (PEXPIRE 1 ms) and waits until it has.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from keel.schemes import scheme_of
from keel.kv import KeyValue, open_kv
from tests.contract import kv_race_writer

TTL = 60.0  # seconds: long enough that nothing expires by itself while a test runs, even on a loaded machine


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.redis)])
def kv_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "file":
        return f"file://{tmp_path_factory.mktemp('kv')}/kv.db"
    # A database of its own, emptied per test: other suites share the session's server.
    url: str = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/9"
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture
def kv(kv_url: str, clock: Clock) -> Iterator[KeyValue]:
    store = open_kv(kv_url, clock=clock) if scheme_of(kv_url) == "file" else open_kv(kv_url)
    yield store
    store.close()


@pytest.fixture
def expire(kv_url: str, clock: Clock) -> Callable[[], None]:
    if scheme_of(kv_url) == "file":
        def past_the_ttl() -> None:
            clock.now += TTL + 1

        return past_the_ttl

    def expire_now() -> None:
        import redis

        client = redis.Redis.from_url(kv_url)
        try:
            keys = [k for k in client.scan_iter(count=1000) if client.pttl(k) > 0]
            for key in keys:
                held = client.pttl(key)
                assert 0 < held <= TTL * 1000, f"{key!r} holds a TTL of {held} ms, not {TTL} s"
                client.pexpire(key, 1)
            deadline = time.monotonic() + 30  # generous: the server expires them within milliseconds
            while keys and client.exists(*keys) and time.monotonic() < deadline:
                time.sleep(0.002)
            assert not keys or client.exists(*keys) == 0, "Redis did not expire the keys within 30 s"
        finally:
            client.close()

    return expire_now


def version_of(value: bytes | None) -> int:
    return -1 if value is None else int(value)


# -- put / get ------------------------------------------------------------------------------


def test_engine_satisfies_the_protocol(kv: KeyValue) -> None:
    assert isinstance(kv, KeyValue)


def test_missing_key_reads_as_none(kv: KeyValue) -> None:
    assert kv.get("nope") is None
    assert kv.get_many(["nope", "nada"]) == [None, None]


def test_last_write_wins(kv: KeyValue) -> None:
    kv.put_many([("a", b"1"), ("b", b"1")])
    kv.put_many([("a", b"2")])
    assert kv.get("a") == b"2"
    assert kv.get("b") == b"1"
    kv.put_many([("c", b"first"), ("c", b"second")])  # within one batch too
    assert kv.get("c") == b"second"


def test_values_and_keys_round_trip_exactly(kv: KeyValue) -> None:
    values = {
        "empty": b"",
        "binary": bytes(range(256)),
        "tags": b"\x00\x01abc",  # looks like an engine header: must come back untouched
        "big": b"v" * (1 << 20),
        "unicodé/ключ/🔑": b"ok",
        "spaces and\ttabs": b"ok",
    }
    kv.put_many(list(values.items()))
    assert kv.get_many(list(values)) == list(values.values())
    assert {k: v for k, v in kv.scan("")} == values


def test_get_many_keeps_request_order_with_misses_and_repeats(kv: KeyValue) -> None:
    kv.put_many([(f"k/{i}", str(i).encode()) for i in range(0, 3000, 2)])  # even keys only
    wanted = [f"k/{i}" for i in range(3000)]
    random.Random(1).shuffle(wanted)
    wanted += wanted[:10]  # repeats
    expected = [str(int(k[2:])).encode() if int(k[2:]) % 2 == 0 else None for k in wanted]
    assert kv.get_many(wanted) == expected
    assert kv.get_many([]) == []


def test_data_survives_reopening(kv_url: str) -> None:
    first = open_kv(kv_url)
    first.put_many([("kept", b"yes")])
    first.upsert_many([("versioned", 7, b"7")])
    first.close()
    second = open_kv(kv_url)
    try:
        assert second.get("kept") == b"yes"
        assert second.upsert_many([("versioned", 6, b"6")]) == 0  # the version survived too
        assert second.get("versioned") == b"7"
    finally:
        second.close()


# -- TTL ------------------------------------------------------------------------------------


def test_expired_values_are_never_returned(kv: KeyValue, expire: Callable[[], None]) -> None:
    kv.put_many([("ttl/a", b"1"), ("ttl/b", b"2")], ttl=TTL)
    kv.upsert_many([("ttl/c", 1, b"3")], ttl=TTL)
    kv.put_many([("ttl/forever", b"4")])
    assert kv.get_many(["ttl/a", "ttl/b", "ttl/c"]) == [b"1", b"2", b"3"]
    expire()
    assert kv.get("ttl/a") is None
    assert kv.get_many(["ttl/a", "ttl/b", "ttl/c", "ttl/forever"]) == [None, None, None, b"4"]
    assert list(kv.scan("ttl/")) == [("ttl/forever", b"4")]
    assert kv.count("ttl/") == 1
    assert kv.delete(["ttl/a", "ttl/b"]) == 0  # already gone


def test_a_put_without_ttl_makes_the_key_permanent(kv: KeyValue, expire: Callable[[], None]) -> None:
    kv.put_many([("k", b"short")], ttl=TTL)
    kv.put_many([("k", b"long")])
    expire()
    assert kv.get("k") == b"long"


def test_a_put_with_ttl_makes_a_permanent_key_expire(kv: KeyValue, expire: Callable[[], None]) -> None:
    kv.put_many([("k", b"long")])
    kv.put_many([("k", b"short")], ttl=TTL)
    assert kv.get("k") == b"short"
    expire()
    assert kv.get("k") is None


def test_a_losing_upsert_leaves_value_and_ttl_alone(kv: KeyValue, expire: Callable[[], None]) -> None:
    kv.upsert_many([("k", 5, b"5")])
    assert kv.upsert_many([("k", 4, b"4")], ttl=TTL) == 0
    expire()
    assert kv.get("k") == b"5"


def test_an_expired_version_no_longer_guards_the_key(kv: KeyValue, expire: Callable[[], None]) -> None:
    kv.upsert_many([("k", 10, b"10")], ttl=TTL)
    assert kv.upsert_many([("k", 9, b"9")]) == 0  # guarded while it lives
    expire()
    assert kv.upsert_many([("k", 1, b"1")]) == 1
    assert kv.get("k") == b"1"


def test_ttl_must_be_positive(kv: KeyValue) -> None:
    for bad in (0, -1.0):
        with pytest.raises(ValueError):
            kv.put_many([("k", b"v")], ttl=bad)
        with pytest.raises(ValueError):
            kv.upsert_many([("k", 1, b"v")], ttl=bad)
    assert kv.get("k") is None


# -- versioned upserts ----------------------------------------------------------------------


def test_newer_or_equal_version_wins_older_is_refused(kv: KeyValue) -> None:
    assert kv.upsert_many([("k", 5, b"five")]) == 1
    assert kv.upsert_many([("k", 4, b"four")]) == 0
    assert kv.get("k") == b"five"
    assert kv.upsert_many([("k", 5, b"five again")]) == 1  # equal wins: a replay rewrites the same window
    assert kv.get("k") == b"five again"
    assert kv.upsert_many([("k", 6, b"six"), ("new", 0, b"zero"), ("k", 3, b"three")]) == 2
    assert kv.get_many(["k", "new"]) == [b"six", b"zero"]


def test_upserts_in_one_batch_apply_in_order(kv: KeyValue) -> None:
    assert kv.upsert_many([("k", 1, b"1"), ("k", 3, b"3"), ("k", 2, b"2")]) == 2
    assert kv.get("k") == b"3"


def test_put_clears_the_version(kv: KeyValue) -> None:
    kv.upsert_many([("k", 100, b"100")])
    kv.put_many([("k", b"plain")])
    assert kv.get("k") == b"plain"
    assert kv.upsert_many([("k", -5, b"-5")]) == 1  # nothing guards the key any more
    assert kv.get("k") == b"-5"


def test_versions_compare_as_64_bit_integers(kv: KeyValue) -> None:
    big = 2**53  # a float (or a Lua number) cannot tell big from big + 1
    kv.upsert_many([("k", big + 1, b"later")])
    assert kv.upsert_many([("k", big, b"earlier")]) == 0
    kv.upsert_many([("neg", -1, b"-1")])
    assert kv.upsert_many([("neg", -2, b"-2")]) == 0
    assert kv.upsert_many([("neg", 0, b"0")]) == 1
    kv.upsert_many([("edge", -(2**63), b"min")])
    assert kv.upsert_many([("edge", 2**63 - 1, b"max")]) == 1
    assert kv.upsert_many([("edge", 2**63 - 2, b"below max")]) == 0
    assert kv.get_many(["k", "neg", "edge"]) == [b"later", b"0", b"max"]
    for bad in (2**63, -(2**63) - 1):
        with pytest.raises(ValueError):
            kv.upsert_many([("k", bad, b"x")])


def test_concurrent_threads_never_lose_the_newest_version(kv: KeyValue) -> None:
    keys, versions, threads = 3, 200, 4
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        # Writers own disjoint versions, so the newest is written exactly once: a lost update shows.
        order = [(k, v) for k in range(keys) for v in range(1, versions + 1) if v % threads == seed]
        random.Random(seed).shuffle(order)
        try:
            for start in range(0, len(order), 5):
                kv.upsert_many([(f"race/{k}", v, str(v).encode()) for k, v in order[start : start + 5]])
        except BaseException as exc:  # surfaced below: a thread's exception would vanish otherwise
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(seed,)) for seed in range(threads)]
    names, seen = [f"race/{k}" for k in range(keys)], [-1] * keys
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        now = [version_of(v) for v in kv.get_many(names)]
        assert all(a >= b for a, b in zip(now, seen)), f"a version went back: {seen} -> {now}"
        seen = now
    for w in workers:
        w.join()
    assert errors == []
    assert kv.get_many([f"race/{k}" for k in range(keys)]) == [str(versions).encode()] * keys


def test_concurrent_processes_never_lose_or_regress_a_version(kv_url: str) -> None:
    """Two writer processes race on the same keys while this process watches every key only grow.

    The writers meet at a barrier before every few batches, so they write side by side all the way
    (tests/contract/kv_race_writer.py), and count how often each saw the other write between two of
    its own batches: the test requires that they did.
    """
    keys, versions = 3, 600  # each writer owns half the versions (odd / even), the newest is written once
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no engine state inherited by fork
    barrier, counters = spawn.Barrier(2), spawn.Array("i", 3)
    procs = [spawn.Process(target=kv_race_writer.write, args=(kv_url, seed, keys, versions, barrier, counters))
             for seed in (1, 2)]
    for p in procs:
        p.start()
    reader = open_kv(kv_url)
    names = [f"race/{k}" for k in range(keys)]
    seen = [-1] * keys
    try:
        while any(p.is_alive() for p in procs):
            now = [version_of(v) for v in reader.get_many(names)]
            assert all(a >= b for a, b in zip(now, seen)), f"a version went back: {seen} -> {now}"
            seen = now
            time.sleep(0.005)
        assert [p.exitcode for p in procs] == [0, 0]
        assert counters[kv_race_writer.INTERLEAVINGS] > 0, "the writers never wrote in between each other"
        assert reader.get_many(names) == [str(versions).encode()] * keys
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        reader.close()


# -- delete, scan, count ----------------------------------------------------------------------


def test_delete_removes_and_counts_only_existing_keys(kv: KeyValue) -> None:
    kv.put_many([("a", b"1"), ("b", b"2"), ("c", b"3")])
    assert kv.delete(["a", "b", "missing"]) == 2
    assert kv.get_many(["a", "b", "c"]) == [None, None, b"3"]
    assert kv.delete(["a"]) == 0
    assert kv.delete([]) == 0


def test_delete_also_forgets_the_version(kv: KeyValue) -> None:
    kv.upsert_many([("k", 9, b"9")])
    kv.delete(["k"])
    assert kv.upsert_many([("k", 1, b"1")]) == 1


def test_scan_returns_exactly_the_keys_with_the_prefix(kv: KeyValue) -> None:
    kv.put_many([("views/a", b"1"), ("views/b", b"2"), ("views", b"3"), ("viewsX/c", b"4"), ("other/a", b"5")])
    assert sorted(kv.scan("views/")) == [("views/a", b"1"), ("views/b", b"2")]
    assert sorted(k for k, _ in kv.scan("views")) == ["views", "views/a", "views/b", "viewsX/c"]
    assert sorted(k for k, _ in kv.scan("")) == ["other/a", "views", "views/a", "views/b", "viewsX/c"]
    assert list(kv.scan("nothing/")) == []


def test_scan_treats_glob_and_sql_wildcards_literally(kv: KeyValue) -> None:
    tricky = ["v*/1", "v?/2", "v[ab]/3", "va/4", "v\\/5", "v%/6", "v_/7", "v]/8", "v^/9"]
    kv.put_many([(k, k.encode()) for k in tricky])
    for key in tricky:
        assert list(kv.scan(key)) == [(key, key.encode())], key
        assert kv.count(key) == 1, key
    assert sorted(k for k, _ in kv.scan("v[")) == ["v[ab]/3"]
    assert kv.count("v") == len(tricky)


def test_scan_with_non_ascii_prefix(kv: KeyValue) -> None:
    kv.put_many([("é/1", b"1"), ("é/2", b"2"), ("ê/3", b"3"), ("e/4", b"4"), ("\U0010ffff/5", b"5")])
    assert sorted(k for k, _ in kv.scan("é")) == ["é/1", "é/2"]
    assert [k for k, _ in kv.scan("\U0010ffff")] == ["\U0010ffff/5"]


def test_scan_yields_each_key_once_and_honours_limit(kv: KeyValue) -> None:
    kv.put_many([(f"many/{i:05d}", b"x") for i in range(2500)])
    kv.put_many([("manz", b"outside")])
    keys = [k for k, _ in kv.scan("many/")]
    assert len(keys) == 2500 and len(set(keys)) == 2500
    limited = list(kv.scan("many/", limit=1234))
    assert len(limited) == 1234 and len({k for k, _ in limited}) == 1234
    assert all(k.startswith("many/") for k, _ in limited)
    assert list(kv.scan("many/", limit=0)) == []


def test_count_counts_live_keys_by_prefix(kv: KeyValue, expire: Callable[[], None]) -> None:
    assert kv.count() == 0
    kv.put_many([(f"a/{i}", b"x") for i in range(30)] + [(f"b/{i}", b"x") for i in range(12)])
    kv.put_many([("a/short", b"x")], ttl=TTL)
    assert kv.count("a/") == 31
    assert kv.count("b/") == 12
    assert kv.count() == 43
    expire()
    assert kv.count("a/") == 30
    kv.delete(["b/0"])
    assert kv.count() == 41
