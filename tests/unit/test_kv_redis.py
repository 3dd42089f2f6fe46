"""The Redis kv engine's subtle parts: version packing, glob escaping, TTL rounding, outages."""

from __future__ import annotations

import random
import re

import pytest

from keel.errors import BackendError
from keel.kv import open_kv
from keel.kv.redis import _glob_escape, _pack_version, _ttl_ms, _unpack
from tests.harness.redis import RedisServer, free_port


def test_packed_versions_sort_bytewise_like_the_integers() -> None:
    rng = random.Random(5)
    edges = [-(2**63), -(2**53) - 1, -1, 0, 1, 2**53, 2**53 + 1, 2**63 - 1]
    versions = edges + [rng.randint(-(2**63), 2**63 - 1) for _ in range(500)]
    for a in versions:
        for b in rng.sample(versions, 20) + edges:
            assert (_pack_version(a) >= _pack_version(b)) == (a >= b), (a, b)
    with pytest.raises(ValueError):
        _pack_version(2**63)


def test_glob_escape_matches_only_the_literal_text() -> None:
    # Redis's glob: * ? [...] and backslash escapes; re-check the escaping with an equivalent regex.
    def glob_to_regex(pattern: str) -> str:
        out, i = "", 0
        while i < len(pattern):
            ch = pattern[i]
            out += re.escape(pattern[i + 1]) if ch == "\\" else {"*": ".*", "?": "."}.get(ch, re.escape(ch))
            i += 2 if ch == "\\" else 1
        return out

    for text in ["plain/", "a*b", "q?", "[x]", "back\\slash", "^-!"]:
        regex = glob_to_regex(_glob_escape(text) + "*")
        assert re.fullmatch(regex, text + "tail")
        assert not re.fullmatch(regex, "Z" + text)


def test_ttl_is_rounded_up_to_whole_milliseconds() -> None:
    assert _ttl_ms(None) is None
    assert _ttl_ms(0.2) == 200
    assert _ttl_ms(0.0001) == 1  # never 0: PX 0 is an error, and a TTL must not mean "forever"
    with pytest.raises(ValueError):
        _ttl_ms(0)


def test_a_value_not_written_by_keel_is_reported() -> None:
    assert _unpack(b"\x00abc") == b"abc"
    assert _unpack(b"\x01" + bytes(8) + b"abc") == b"abc"
    with pytest.raises(BackendError, match="not written by keel"):
        _unpack(b"hello")


def test_unreachable_server_names_the_url_and_what_to_check() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(BackendError) as info:
        open_kv(url, retries=0, connect_timeout=0.5)
    assert url in str(info.value) and "redis-server is running" in str(info.value)


@pytest.mark.redis
def test_an_outage_fails_clearly_and_the_engine_recovers_after_restart(redis_server: RedisServer) -> None:
    kv = open_kv(redis_server.url, retries=1, connect_timeout=0.5)
    try:
        kv.put_many([("before", b"1")])
        redis_server.stop()
        with pytest.raises(BackendError, match=re.escape(redis_server.url)):
            kv.get_many(["before"])
        with pytest.raises(BackendError):
            kv.upsert_many([("k", 1, b"1")])
        redis_server.start()
        # the harness's server keeps nothing on disk: it comes back empty, and usable
        assert kv.get("before") is None
        assert kv.upsert_many([("k", 1, b"1")]) == 1
        assert kv.get("k") == b"1"
    finally:
        if not redis_server.running:
            redis_server.start()
        kv.close()
