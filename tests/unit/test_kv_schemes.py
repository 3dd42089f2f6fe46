"""The one kv scheme table: the sync engine and the gateway's async reader are opened from it, so a
scheme is supported by both or refused by both, with the same error."""

from __future__ import annotations

import asyncio
import importlib

import pytest

from keel.errors import UnknownSchemeError
from keel.kv import ENGINES, KeyValue, open_kv
from keel.kv.async_reader import open_async_reader


def no_kv() -> KeyValue:
    raise AssertionError("an unknown scheme must be refused before the sync engine is asked for")


@pytest.mark.parametrize("scheme", sorted(ENGINES))
def test_every_scheme_names_an_opener_and_a_reader_that_exist(scheme: str) -> None:
    for target in ENGINES[scheme]:
        module, _, factory = target.partition(":")
        assert callable(getattr(importlib.import_module(module), factory)), target


def test_an_unknown_scheme_is_refused_by_both_with_the_same_error() -> None:
    url = "memcached://127.0.0.1:11211"
    with pytest.raises(UnknownSchemeError) as sync:
        open_kv(url)

    async def open_reader() -> None:
        await open_async_reader(url, no_kv).aclose()

    with pytest.raises(UnknownSchemeError) as reader:
        asyncio.run(open_reader())
    assert str(reader.value) == str(sync.value) and "rediss" in str(sync.value)
