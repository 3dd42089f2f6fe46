"""API keys: who may call the gateway, and for what.

A key is ``keel_<id>_<secret>``: ``id`` (8 hex digits) names the stored record, ``secret`` is 32
random bytes (url-safe base64). Only ``sha256(secret)`` is stored, in ``<state dir>/keys.json``
(mode 0600, replaced atomically), and the hash is compared in constant time. The key itself is
shown once, by ``create_key``; it cannot be recovered from the file.

Scopes grant one action on one object, with ``*`` wildcards (fnmatch):

    ingest:<stream>   POST /v1/streams/<stream>/events
    read:<view>       GET /v1/views/<view>/<key>, POST /v1/views/<view>
    call:<endpoint>   a declared endpoint, by name
    admin             /metrics (and whatever needs an operator)
    *                 everything, except writing keel's built-in streams

keel's built-in streams (``exposures``) are written by keel itself: a wildcard never grants them,
so a client key cannot forge experiment exposures. Only a scope that names one exactly
(``ingest:exposures``) does.

The gateway reads the file through a `KeyRing`, which notices changes (``keel keys revoke`` from
another process takes effect within ``reload_every`` seconds) without re-reading on every request.
"""

from __future__ import annotations

import base64
import fcntl
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from keel.errors import BackendError, ConfigError, NotFoundError
from keel.project.exposures import EXPOSURES

KEYS_FILE = "keys.json"
_SCOPE = re.compile(r"^(admin|\*|(ingest|read|call):[a-z0-9_*?.\-]+)$")
# scopes a wildcard never grants: writing a stream keel writes itself
_BUILT_IN = frozenset({f"ingest:{EXPOSURES}"})
_TOKEN = re.compile(r"^keel_([0-9a-f]{8})_([A-Za-z0-9_\-]{43})$")


@dataclass(frozen=True)
class KeyRecord:
    """What is stored about one key (never the key itself)."""

    id: str
    name: str
    scopes: tuple[str, ...]
    secret_sha256: str
    created: str
    rate: float | None = None  # requests per second; None: the gateway's default
    revoked: str | None = None


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a key, or the local developer on loopback (no key)."""

    name: str
    scopes: tuple[str, ...]
    key_id: str | None = None
    rate: float | None = None
    _granted: dict[str, bool] = field(default_factory=dict, init=False, compare=False, repr=False)

    def allows(self, needed: str) -> bool:
        """True when one of the scopes grants ``needed`` (e.g. ``read:trending``); memoized."""
        hit = self._granted.get(needed)
        if hit is None:
            hit = self._granted[needed] = scope_allows(self.scopes, needed)
            if len(self._granted) > 4096:  # bounded: scopes are per route, but names come from URLs
                self._granted.clear()
        return hit


LOCAL_DEVELOPER = Principal("local developer (loopback, no key)", ("*",))


def scope_allows(scopes: tuple[str, ...] | list[str], needed: str) -> bool:
    """True when a scope grants ``needed``: equal to it, or a wildcard matching it (never a built-in stream)."""
    if needed in _BUILT_IN:
        return needed in scopes
    return any(s == "*" or s == needed or fnmatch.fnmatchcase(needed, s) for s in scopes)


def check_scope(scope: str) -> str:
    if not _SCOPE.match(scope):
        raise ConfigError(f"bad scope {scope!r}: use ingest:<stream>, read:<view>, call:<endpoint>, admin or *, "
                          "with * wildcards in the name (e.g. read:*)")
    return scope


def keys_path(state_dir: Path) -> Path:
    return Path(state_dir) / KEYS_FILE


def load_keys(path: Path) -> list[KeyRecord]:
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())["keys"]
        return [KeyRecord(**{**r, "scopes": tuple(r["scopes"])}) for r in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a keel key file ({exc}); restore it from a backup or delete it and "
                          "create the keys again with `keel keys create`") from exc


@contextmanager
def _locked(path: Path) -> Iterator[list[KeyRecord]]:
    """The key file's records, held under an exclusive lock on ``keys.json.lock`` beside it for a
    read-modify-write: without it, two processes (``keel keys create`` and ``revoke``) each rewrite the
    file from their own copy, and the later one drops the other's new key or brings a revoked one back.
    (The file itself is replaced atomically, so readers need no lock.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield load_keys(path)
    finally:
        os.close(fd)  # closing releases the lock


def _save(path: Path, records: list[KeyRecord]) -> None:
    """Replace the key file atomically and durably: temp file, fsync, rename, fsync of the directory.
    A write that fails (a full disk) leaves the old file as it was and no temp file behind."""
    data = json.dumps({"keys": [asdict(r) for r in records]}, indent=2).encode()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keys-", suffix=".tmp")
        try:
            with open(fd, "wb") as f:  # write() of a file object loops over short writes; os.write does not
                os.fchmod(f.fileno(), 0o600)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise BackendError(f"could not write {path} ({exc.strerror or exc}); the keys are as they were before "
                           "this command: free disk space (or fix the permissions) and run it again") from exc
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut only once the directory is synced
    finally:
        os.close(dir_fd)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(state_dir: Path, name: str, scopes: list[str], rate: float | None = None) -> tuple[KeyRecord, str]:
    """Store a new key and return its record and the key, which is shown only now."""
    if not scopes:
        raise ConfigError("a key needs at least one --scope (e.g. read:trending, ingest:page_views, admin)")
    if rate is not None and not rate > 0:
        raise ConfigError(f"--rate must be a positive number of requests per second, got {rate}")
    checked = tuple(check_scope(s) for s in scopes)
    path = keys_path(state_dir)
    with _locked(path) as records:
        taken = {r.id for r in records}
        key_id = secrets.token_hex(4)
        while key_id in taken:
            key_id = secrets.token_hex(4)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        record = KeyRecord(id=key_id, name=name, scopes=checked, secret_sha256=_hash(secret), created=_now(),
                           rate=rate)
        _save(path, [*records, record])
    return record, f"keel_{key_id}_{secret}"


def list_keys(state_dir: Path) -> list[KeyRecord]:
    return load_keys(keys_path(state_dir))


def revoke_key(state_dir: Path, id_or_name: str) -> KeyRecord:
    """Revoke the live key with this id or name; the gateway refuses it from its next reload."""
    path = keys_path(state_dir)
    with _locked(path) as records:
        hits = [r for r in records if r.revoked is None and id_or_name in (r.id, r.name)]
        if not hits:
            raise NotFoundError(f"no live key with id or name {id_or_name!r}; `keel keys list` shows them")
        if len(hits) > 1:
            raise ConfigError(f"{len(hits)} live keys are named {id_or_name!r}; revoke one by its id: "
                              + ", ".join(r.id for r in hits))
        revoked = KeyRecord(**{**asdict(hits[0]), "scopes": hits[0].scopes, "revoked": _now()})
        _save(path, [revoked if r.id == revoked.id else r for r in records])
    return revoked


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class KeyRing:
    """The gateway's view of the key file: authenticate a presented key, reload on change."""

    def __init__(self, path: Path, reload_every: float = 1.0) -> None:
        self.path = path
        self.reload_every = reload_every
        self._by_id: dict[str, tuple[KeyRecord, Principal]] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._reload()

    def _reload(self) -> None:
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            records = load_keys(self.path) if stamp is not None else []
            self._by_id = {r.id: (r, Principal(r.name, r.scopes, r.id, r.rate)) for r in records if r.revoked is None}
            self._stamp = stamp

    def authenticate(self, token: str) -> Principal | None:
        """The key's principal, or None for a malformed, unknown or revoked key."""
        now = time.monotonic()
        if now - self._checked >= self.reload_every:
            self._checked = now
            self._reload()
        m = _TOKEN.match(token)
        if m is None:
            return None
        hit = self._by_id.get(m.group(1))
        if hit is None:
            return None
        record, principal = hit
        return principal if hmac.compare_digest(_hash(m.group(2)), record.secret_sha256) else None


__all__ = [
    "LOCAL_DEVELOPER",
    "KeyRecord",
    "KeyRing",
    "Principal",
    "create_key",
    "keys_path",
    "list_keys",
    "revoke_key",
    "scope_allows",
]
