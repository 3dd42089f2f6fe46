"""The Redis kv engine's subtle parts: version compare in Lua, glob escaping, TTL rounding, outages, URLs."""

from __future__ import annotations

import random
import re

import pytest

from keel.errors import BackendError, ConfigError
from keel.kv import open_kv
from keel.kv.redis import _glob_escape, _ttl_ms, safe_url
from tests.harness.process import free_port
from tests.harness.redis import RedisServer


@pytest.mark.redis
def test_the_upsert_script_compares_versions_like_64_bit_integers(redis_server: RedisServer) -> None:
    # The script compares decimal strings digit by digit; check it against Python's integers.
    rng = random.Random(5)
    edges = [-(2**63), -(2**53) - 1, -10, -9, -1, 0, 1, 9, 10, 2**53, 2**53 + 1, 2**63 - 1]
    pairs = [(a, b) for a in edges for b in edges]
    pairs += [(rng.randint(-(2**63), 2**63 - 1), rng.randint(-(2**63), 2**63 - 1)) for _ in range(300)]
    pairs += [(n, n + rng.choice((-1, 1))) for n in (rng.randint(-(10**18), 10**18) for _ in range(100))]
    kv = open_kv(redis_server.url.rsplit("/", 1)[0] + "/11")
    try:
        kv.upsert_many([(f"cmp/{i}", b, b"old") for i, (_, b) in enumerate(pairs)])
        written = [kv.upsert_many([(f"cmp/{i}", a, b"new")]) for i, (a, _) in enumerate(pairs)]
        assert written == [int(a >= b) for a, b in pairs]
        kv.delete([f"cmp/{i}" for i in range(len(pairs))])
    finally:
        kv.close()
    with pytest.raises(ValueError):
        kv.upsert_many([("k", 2**63, b"x")])


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


def test_passwords_never_reach_messages_and_bad_urls_are_config_errors() -> None:
    assert safe_url("rediss://:s3cret@cache:6380/0?ssl_ca_certs=/ca.pem") == "rediss://:***@cache:6380/0?ssl_ca_certs=/ca.pem"
    assert safe_url("redis://keel:s3cret@cache/1") == "redis://keel:***@cache/1"
    assert safe_url("redis://cache:6379/0") == "redis://cache:6379/0"
    port = free_port()
    with pytest.raises(BackendError) as info:
        open_kv(f"redis://keel:s3cret@127.0.0.1:{port}/0", retries=0, connect_timeout=0.5)
    assert "s3cret" not in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    with pytest.raises(ConfigError, match="kv URL"):
        open_kv("redis://127.0.0.1/0?socket_timeout=soon")


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
