"""API keys: stored hashed, shown once, scoped with wildcards, revocable while a gateway runs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from keel.errors import ConfigError, NotFoundError
from keel.serve.keys import (
    KeyRing,
    create_key,
    keys_path,
    list_keys,
    revoke_key,
    scope_allows,
)


def test_only_the_hash_is_stored_in_a_private_file(tmp_path: Path) -> None:
    record, key = create_key(tmp_path, "shop-frontend", ["ingest:page_views"])
    text = keys_path(tmp_path).read_text()
    secret = key.split("_", 2)[2]
    assert secret not in text and key not in text
    assert record.secret_sha256 in text
    assert stat.S_IMODE(os.stat(keys_path(tmp_path)).st_mode) == 0o600
    assert [r.name for r in list_keys(tmp_path)] == ["shop-frontend"]


def test_a_key_authenticates_and_a_wrong_one_does_not(tmp_path: Path) -> None:
    record, key = create_key(tmp_path, "reader", ["read:*"], rate=5)
    ring = KeyRing(keys_path(tmp_path))
    principal = ring.authenticate(key)
    assert principal is not None and principal.key_id == record.id and principal.rate == 5
    assert ring.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # same id, wrong secret
    assert ring.authenticate("keel_00000000_" + "x" * 43) is None  # unknown id
    assert ring.authenticate("not a key") is None
    assert ring.authenticate("") is None


def test_revocation_reaches_a_running_keyring(tmp_path: Path) -> None:
    _, key = create_key(tmp_path, "ci", ["admin"])
    ring = KeyRing(keys_path(tmp_path), reload_every=0.0)
    assert ring.authenticate(key) is not None
    revoke_key(tmp_path, "ci")
    assert ring.authenticate(key) is None
    assert json.loads(keys_path(tmp_path).read_text())["keys"][0]["revoked"]
    with pytest.raises(NotFoundError):
        revoke_key(tmp_path, "ci")


def test_scopes_and_wildcards() -> None:
    assert scope_allows(("read:*",), "read:trending")
    assert not scope_allows(("read:*",), "ingest:page_views")
    assert scope_allows(("ingest:page_*",), "ingest:page_views")
    assert not scope_allows(("ingest:page_*",), "ingest:purchases")
    assert scope_allows(("*",), "admin")
    assert not scope_allows(("call:recommend",), "admin")


def test_no_wildcard_grants_writing_a_built_in_stream() -> None:
    for wildcard in ("*", "ingest:*", "ingest:exp*", "ingest:exposure?", "ingest:[e]xposures"):
        assert not scope_allows((wildcard,), "ingest:exposures"), wildcard
    assert scope_allows(("read:*", "ingest:exposures"), "ingest:exposures")
    assert scope_allows(("*",), "read:exposures") and scope_allows(("ingest:*",), "ingest:exposures_archive")


def test_bad_scopes_and_rates_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bad scope"):
        create_key(tmp_path, "x", ["write:everything"])
    with pytest.raises(ConfigError, match="at least one"):
        create_key(tmp_path, "x", [])
    with pytest.raises(ConfigError, match="rate"):
        create_key(tmp_path, "x", ["admin"], rate=0)
    assert list_keys(tmp_path) == []
