"""Views that tools without keel can read: plain JSON under ``<view>/<key>`` in Redis and in the SQLite file.

Every check here reads with a client that knows nothing of keel (redis-py's plain client, the
``redis-cli`` and ``sqlite3`` command-line tools, Python's sqlite3 module) and compares with the
values the test wrote, spelled out by hand.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keel.errors import BackendError
from keel.kv import open_kv
from keel.kv.views import Views
from tests.harness.redis import RedisServer

TOP = {"items": [{"item_id": "sku-1", "views": 42}, {"item_id": "sku-é", "views": 7}]}
HOUR = 3600.0


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[tuple[str, Any]]:
    """(url, plain redis-py client) of database 10, emptied per test."""
    import redis

    url = redis_server.url.rsplit("/", 1)[0] + "/10"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.close()


def redis_cli(server: RedisServer, *args: str) -> str:
    cli = shutil.which("redis-cli")
    assert cli is not None, "redis-cli is not installed: run scripts/install-redis.sh"
    done = subprocess.run([cli, "-h", "127.0.0.1", "-p", str(server.port), "-n", "10", *args],
                          capture_output=True, check=True, timeout=30)
    return done.stdout.decode()


@pytest.mark.redis
def test_redis_cli_and_a_plain_client_read_a_view_value_as_json(
    redis_server: RedisServer, redis_db: tuple[str, Any]
) -> None:
    url, client = redis_db
    kv = open_kv(url)
    try:
        Views(kv, {"trending": HOUR}).upsert("trending", [("_top", 5, TOP)])
        Views(kv, {"plain": None}).put("plain", [("k", [1, "two"])])
    finally:
        kv.close()
    assert json.loads(client.get("trending/_top")) == TOP
    assert json.loads(client.get("plain/k")) == [1, "two"]
    assert json.loads(redis_cli(redis_server, "GET", "trending/_top")) == TOP
    assert redis_cli(redis_server, "TYPE", "trending/_top").strip() == "string"


@pytest.mark.redis
def test_redis_keeps_the_version_in_a_companion_key_with_the_same_expiry(redis_db: tuple[str, Any]) -> None:
    url, client = redis_db
    kv = open_kv(url)
    try:
        assert kv.upsert_many([("trending/_top", 5, b'{"v":5}')], ttl=HOUR) == 1
        assert client.get("keel:version:trending/_top") == b"5"
        value_at = client.pexpiretime("trending/_top")
        assert value_at > 0 and client.pexpiretime("keel:version:trending/_top") == value_at
        # a newer version without a TTL makes both keys permanent; a put drops the version key
        assert kv.upsert_many([("trending/_top", -(2**63), b"0")]) == 0
        assert kv.upsert_many([("trending/_top", 2**63 - 1, b'{"v":"max"}')]) == 1
        assert client.get("keel:version:trending/_top") == str(2**63 - 1).encode()
        assert client.pttl("trending/_top") == -1 and client.pttl("keel:version:trending/_top") == -1
        kv.put_many([("trending/_top", b"[]")])
        assert client.exists("keel:version:trending/_top") == 0
        # the companion keys are keel's bookkeeping, not values: scan and count never show them
        kv.upsert_many([("other/a", 1, b"1")])
        assert sorted(k for k, _ in kv.scan("")) == ["other/a", "trending/_top"]
        assert kv.count() == 2 and kv.count("keel:") == 0
    finally:
        kv.close()


@pytest.mark.redis
def test_a_value_deleted_by_another_client_no_longer_guards_its_key(redis_db: tuple[str, Any]) -> None:
    url, client = redis_db
    kv = open_kv(url)
    try:
        kv.upsert_many([("trending/_top", 9, b"9")])
        client.delete("trending/_top")  # an operator's DEL leaves the version key
        assert kv.upsert_many([("trending/_top", 1, b"1")]) == 1
        assert kv.get("trending/_top") == b"1"
    finally:
        kv.close()


@pytest.mark.redis
def test_redis_data_in_the_old_tagged_layout_is_refused_with_the_fix(redis_db: tuple[str, Any]) -> None:
    url, client = redis_db
    client.set("trending/_top", b"\x01" + bytes(8) + b'{"v":1}')
    client.set("trending/a", b"\x00" + b'{"v":2}')
    with pytest.raises(BackendError, match=r"older layout.*FLUSHDB.*keel replay"):
        open_kv(url)


def test_the_sqlite_file_holds_json_text_and_the_version_in_its_own_column(tmp_path: Path) -> None:
    path = tmp_path / "kv.db"
    kv = open_kv(f"file://{path}")
    try:
        Views(kv, {"trending": HOUR}).upsert("trending", [("_top", 5, TOP)])
    finally:
        kv.close()
    with sqlite3.connect(path) as db:
        value, version, kind = db.execute(
            "SELECT value, version, typeof(value) FROM kv WHERE key = 'trending/_top'").fetchone()
    assert kind == "text" and json.loads(value) == TOP and version == 5
    cli = shutil.which("sqlite3")
    assert cli is not None, "the sqlite3 command-line tool is not installed (Debian package sqlite3)"
    done = subprocess.run([cli, "-readonly", str(path), "SELECT value FROM kv WHERE key = 'trending/_top'"],
                          capture_output=True, check=True, timeout=30)
    assert json.loads(done.stdout) == TOP
