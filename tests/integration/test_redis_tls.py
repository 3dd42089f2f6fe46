"""``rediss://``: the kv engine and the gateway's async reader over TLS, against redis-server serving TLS only.

The CA and the server certificate are made per module (tests/harness/redis.py `make_tls`); the
server listens for TLS only (``--port 0``), so an answer on its port proves the client spoke TLS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.errors import BackendError, ConfigError
from keel.kv import KeyValue, open_kv
from keel.kv.async_reader import open_async_reader
from tests.harness.redis import RedisServer, find_redis_server, make_tls, ping

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.fail("redis-server is not installed: run scripts/install-redis.sh", pytrace=False)
    workdir = tmp_path_factory.mktemp("redis-tls")
    server = RedisServer(binary, workdir, tls=make_tls(workdir / "certs"))
    server.start()
    yield server
    server.stop()


def no_kv() -> KeyValue:
    raise AssertionError("a Redis URL must get the async Redis reader, not the inline one")


def test_the_server_speaks_tls_only(tls_server: RedisServer) -> None:
    assert tls_server.tls is not None
    assert ping(tls_server.port, tls=tls_server.tls)
    assert not ping(tls_server.port)  # plain TCP gets no PONG: what passes below passed over TLS


def test_the_kv_engine_reads_and_writes_over_tls(tls_server: RedisServer) -> None:
    assert tls_server.url.startswith("rediss://") and "ssl_ca_certs=" in tls_server.url
    kv = open_kv(tls_server.url)
    try:
        kv.put_many([("tls/plain", b'{"a":1}')], ttl=3600)
        assert kv.upsert_many([("tls/versioned", 3, b"3"), ("tls/versioned", 2, b"2")]) == 1
        assert kv.get_many(["tls/plain", "tls/versioned", "tls/none"]) == [b'{"a":1}', b"3", None]
        assert sorted(kv.scan("tls/")) == [("tls/plain", b'{"a":1}'), ("tls/versioned", b"3")]
    finally:
        kv.close()


def test_the_gateways_async_reader_reads_over_tls(tls_server: RedisServer) -> None:
    kv = open_kv(tls_server.url)
    kv.put_many([("tls/one", b"1"), ("tls/two", b"[2]")])
    kv.close()

    async def read() -> list[list[bytes | None]]:
        reader = open_async_reader(tls_server.url, no_kv)
        try:
            return list(await asyncio.gather(reader.get_many(["tls/one", "tls/nope"]), reader.get_many(["tls/two"])))
        finally:
            await reader.aclose()

    assert asyncio.run(read()) == [[b"1", None], [b"[2]"]]


def test_a_certificate_the_client_cannot_verify_is_refused_with_the_fix(
    tls_server: RedisServer, tmp_path: Path
) -> None:
    without_ca = tls_server.url.split("?", 1)[0]  # the system's CAs did not sign the test server's certificate
    other_ca = f"{without_ca}?ssl_ca_certs={make_tls(tmp_path).ca}"
    for url in (without_ca, other_ca):
        with pytest.raises(BackendError, match=r"TLS.*ssl_ca_certs=/path/ca\.pem"):
            open_kv(url, retries=0)

    async def read() -> None:
        reader = open_async_reader(without_ca, no_kv)
        try:
            await reader.get_many(["tls/one"])
        finally:
            await reader.aclose()

    with pytest.raises(BackendError, match=r"TLS.*ssl_ca_certs"):
        asyncio.run(read())


def test_a_plain_url_to_a_tls_port_says_to_use_rediss(tls_server: RedisServer) -> None:
    with pytest.raises(BackendError, match="rediss://"):
        open_kv(f"redis://127.0.0.1:{tls_server.port}/0", retries=0, socket_timeout=2.0)


def test_the_async_reader_follows_the_one_scheme_table(tmp_path: Path) -> None:
    from keel.kv.async_reader import InlineReader
    from keel.kv.async_redis import AsyncRedisReader

    async def kinds() -> list[type]:
        readers = [open_async_reader(url, no_kv) for url in
                   ("redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", f"file://{tmp_path}/kv.db")]
        for reader in readers:
            await reader.aclose()
        return [type(r) for r in readers]

    assert asyncio.run(kinds()) == [AsyncRedisReader, AsyncRedisReader, InlineReader]


def test_a_tls_file_that_is_not_there_is_a_config_error_naming_it(tls_server: RedisServer) -> None:
    url = tls_server.url.split("?", 1)[0] + "?ssl_ca_certs=/nonexistent/keel-ca.pem"
    with pytest.raises(ConfigError, match="ssl_ca_certs=/nonexistent/keel-ca.pem does not exist"):
        open_kv(url)

    async def open_reader() -> None:
        await open_async_reader(url, no_kv).aclose()

    with pytest.raises(ConfigError, match="does not exist"):
        asyncio.run(open_reader())
