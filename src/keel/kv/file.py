"""The embedded kv engine: one SQLite file in WAL mode, shared by every process of a project.

Why SQLite (figures in benchmarks/RESULTS.md, "Fast storage (kv)"): it ships with Python, WAL
lets readers in other processes (the gateway) run while one process writes (a stream
processor), a writer killed mid-transaction leaves the file consistent, and versioned upserts
are one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` statement, atomic by construction.

Layout (``PRAGMA user_version`` 2), readable with the ``sqlite3`` tool or module::

    kv(key TEXT PRIMARY KEY, value TEXT, version INTEGER NULL, expires REAL NULL)

``SELECT value FROM kv WHERE key = 'trending/_top'`` answers a view's JSON text. Values are stored
as TEXT holding exactly the bytes written (``CAST(? AS TEXT)``: no decode on the write path; this
engine reads them back as bytes, so any bytes round-trip). Keys compare bytewise as UTF-8, which is
code point order, so a prefix is a contiguous key range (``prefix <= key < successor(prefix)``)
served by the primary-key index. ``version`` is NULL after a plain put. ``expires`` is a wall-clock
Unix time, comparable across processes; reads filter expired rows, and writes purge them in bounded
batches at most once per ``purge_interval`` seconds (``purge_expired`` does it on demand). A file in
the older layout (BLOB keys and values, ``user_version`` 0) is converted in place when opened.

Threads: one connection per thread (``threading.local``), so readers in a thread pool do not
queue behind each other or behind a writer. Each connection has a lock, held while its thread uses
it and by ``close``: Python's sqlite3 crashes the process (use after free) when a connection is
closed while another thread runs a statement on it. Processes: every write is ``BEGIN IMMEDIATE`` with a
busy timeout, so concurrent writers wait for each other instead of failing or losing updates.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from keel.schemes import file_path
from keel.errors import BackendError, ConfigError

_T = TypeVar("_T")
_CHUNK = 500  # bound parameters per statement (SQLite allows more; 500 keeps statements cached and small)
_PAGE = 1000  # rows per scan page: a scan never holds a read transaction while the caller runs
_MIN_VERSION, _MAX_VERSION = -(2**63), 2**63 - 1

_LAYOUT = 2  # PRAGMA user_version of the current layout; 0 is the older BLOB layout
_TABLE = """
CREATE TABLE kv (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    version INTEGER,
    expires REAL
) WITHOUT ROWID
"""
_INDEX = "CREATE INDEX kv_expires ON kv(expires) WHERE expires IS NOT NULL"

# A newer-or-equal version wins; an unversioned (put) or expired row counts as absent.
_UPSERT = """
INSERT INTO kv(key, value, version, expires) VALUES (?1, CAST(?2 AS TEXT), ?3, ?4)
ON CONFLICT(key) DO UPDATE SET value = excluded.value, version = excluded.version, expires = excluded.expires
WHERE kv.version IS NULL OR excluded.version >= kv.version OR (kv.expires IS NOT NULL AND kv.expires <= ?5)
"""
_PUT = "INSERT OR REPLACE INTO kv(key, value, version, expires) VALUES (?, CAST(? AS TEXT), NULL, ?)"
_LIVE = "(expires IS NULL OR expires > ?)"


def open_file_kv(
    url: str,
    *,
    synchronous: str = "FULL",
    busy_timeout: float = 30.0,
    purge_interval: float = 60.0,
    purge_batch: int = 10_000,
    mmap_size: int = 256 << 20,
    clock: Callable[[], float] = time.time,
) -> FileKeyValue:
    """Open (creating if needed) the kv file at ``file:///abs/path/kv.db``.

    ``synchronous="FULL"`` fsyncs the WAL at every commit, so a written batch survives power
    loss; ``"NORMAL"`` survives a killed process but may lose the last batches on power loss.
    ``busy_timeout`` is how long a writer waits for another process's transaction. ``clock`` gives
    the Unix time that TTLs count from and expire by (every process sharing the file must agree).
    """
    if sqlite3.sqlite_version_info < (3, 35):  # UPSERT ... WHERE and DELETE ... RETURNING
        raise ConfigError(
            f"the file:// kv engine needs SQLite >= 3.35, this Python links {sqlite3.sqlite_version}: "
            "use a Python build with a newer SQLite (e.g. python.org or pyenv builds)"
        )
    if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
        raise ConfigError(f"kv option synchronous={synchronous!r}: use 'FULL' (default), 'EXTRA' or 'NORMAL'")
    return FileKeyValue(file_path(url), synchronous.upper(), busy_timeout, purge_interval, purge_batch, int(mmap_size),
                        clock)


class FileKeyValue:
    """`keel.kv.base.KeyValue` on one SQLite file; thread-safe, process-safe."""

    def __init__(
        self, path: Path, synchronous: str, busy_timeout: float, purge_interval: float, purge_batch: int, mmap_size: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._clock = clock
        self._mmap_size = mmap_size
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._purge_interval = purge_interval
        self._purge_batch = purge_batch
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _connections and _closed, never held during a query
        self._connections: list[tuple[sqlite3.Connection, threading.Lock]] = []
        self._closed = False
        self._next_purge = 0.0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create the directory of kv file {path}: {exc}; check the `kv` URL and permissions") from exc
        self._run(self._create_schema)
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_connections(ref))

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        def read(db: sqlite3.Connection) -> bytes | None:
            row = db.execute(f"SELECT value FROM kv WHERE key = ? AND {_LIVE}", (key, self._clock())).fetchone()
            return None if row is None else bytes(row[0])

        return self._run(read)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        encoded = list(keys)

        def read(db: sqlite3.Connection) -> dict[str, bytes]:
            found: dict[str, bytes] = {}
            now = self._clock()
            snapshot = len(encoded) > _CHUNK  # several statements: read them from one snapshot
            if snapshot:
                db.execute("BEGIN")
            try:
                for start in range(0, len(encoded), _CHUNK):
                    chunk = encoded[start : start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows = db.execute(f"SELECT key, value FROM kv WHERE key IN ({marks}) AND {_LIVE}", (*chunk, now))
                    found.update((k.decode(), bytes(v)) for k, v in rows)
            finally:
                if snapshot and db.in_transaction:
                    db.execute("COMMIT")
            return found

        found = self._run(read)
        return [found.get(k) for k in encoded]

    def scan(self, prefix: str, limit: int | None = None) -> Iterator[tuple[str, bytes]]:
        """Live pairs whose key starts with ``prefix``, in key (code point) order, read page by page."""
        low, high = _key_range(prefix)
        remaining = math.inf if limit is None else limit
        after: str | None = None
        while remaining > 0:
            page_size = int(min(_PAGE, remaining))
            rows = self._run(partial(_scan_page, low=low, high=high, after=after, size=page_size, now=self._clock()))
            yield from rows
            remaining -= len(rows)
            if len(rows) < page_size:
                return
            after = rows[-1][0]

    def count(self, prefix: str = "") -> int:
        low, high = _key_range(prefix)

        def read(db: sqlite3.Connection) -> int:
            sql, args = _range_sql(low, high)
            row = db.execute(f"SELECT count(*) FROM kv WHERE {sql} AND {_LIVE}", (*args, self._clock())).fetchone()
            return int(row[0])

        return self._run(read)

    # -- writes ------------------------------------------------------------------------------

    def put_many(self, items: Sequence[tuple[str, bytes]], ttl: float | None = None) -> None:
        if not items:
            return

        def write(db: sqlite3.Connection) -> None:
            expires = _expiry(ttl, self._clock())
            db.executemany(_PUT, [(k, v, expires) for k, v in items])

        self._write(write)

    def upsert_many(self, items: Sequence[tuple[str, int, bytes]], ttl: float | None = None) -> int:
        rows = [(k, v, _checked_version(version)) for k, version, v in items]
        if not rows:
            return 0

        def write(db: sqlite3.Connection) -> int:
            now = self._clock()
            expires = _expiry(ttl, now)
            cursor = db.executemany(_UPSERT, [(k, v, version, expires, now) for k, v, version in rows])
            return cursor.rowcount  # executemany sums the rows each statement changed: losers change none

        return self._write(write)

    def delete(self, keys: Sequence[str]) -> int:
        encoded = list(keys)
        if not encoded:
            return 0

        def write(db: sqlite3.Connection) -> int:
            now, live = self._clock(), 0
            for start in range(0, len(encoded), _CHUNK):
                chunk = encoded[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for (expires,) in db.execute(f"DELETE FROM kv WHERE key IN ({marks}) RETURNING expires", chunk):
                    live += expires is None or expires > now
            return live

        return self._write(write)

    def purge_expired(self) -> int:
        """Physically remove expired rows now (writes also do it every ``purge_interval``); returns how many."""
        removed = 0
        while True:
            batch = self._write(self._purge_batch_once, purge=False)
            removed += batch
            if batch < self._purge_batch:
                return removed

    def close(self) -> None:
        """Close every thread's connection; the file stays for the other processes using it."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for db, in_use in connections:
            with in_use:  # waits for the statement another thread is running on it
                try:
                    db.close()
                except sqlite3.Error:
                    pass  # closing is best effort: the process may be exiting

    # -- plumbing ----------------------------------------------------------------------------

    def _connection(self) -> tuple[sqlite3.Connection, threading.Lock]:
        mine: tuple[sqlite3.Connection, threading.Lock] | None = getattr(self._local, "db", None)
        if mine is not None:
            return mine
        with self._lock:
            if self._closed:
                raise self._closed_error()
            db = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            mine = (db, threading.Lock())
            self._connections.append(mine)
            with mine[1]:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={self._synchronous}")
                db.execute(f"PRAGMA mmap_size={self._mmap_size}")  # reads from the page cache without a copy: ~1.7x get/s
                db.text_factory = bytes  # TEXT values come back as the exact bytes stored, not decoded
        self._local.db = mine
        return mine

    def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            db, in_use = self._connection()
            with in_use:
                if self._closed:  # closed since this thread last used it
                    raise self._closed_error()
                return work(db)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def _closed_error(self) -> BackendError:
        return BackendError(f"kv file {self.path} is closed: open it again with keel.kv.open_kv")

    def _write(self, work: Callable[[sqlite3.Connection], _T], purge: bool = True) -> _T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction: it holds the write lock from its first read."""

        def transaction(db: sqlite3.Connection) -> _T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                if purge and self._clock() >= self._next_purge:
                    self._next_purge = self._clock() + self._purge_interval
                    self._purge_batch_once(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return result

        return self._run(transaction)

    def _purge_batch_once(self, db: sqlite3.Connection) -> int:
        sql = "DELETE FROM kv WHERE key IN (SELECT key FROM kv WHERE expires IS NOT NULL AND expires <= ? LIMIT ?)"
        return db.execute(sql, (self._clock(), self._purge_batch)).rowcount

    def _create_schema(self, db: sqlite3.Connection) -> None:
        if db.execute("PRAGMA user_version").fetchone()[0] == _LAYOUT:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            (layout,) = db.execute("PRAGMA user_version").fetchone()  # again: another process may have done it
            if layout == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'kv'").fetchone():
                # the older layout: same columns as BLOBs; convert in place (one transaction: all or nothing)
                db.execute("DROP INDEX IF EXISTS kv_expires")
                db.execute("ALTER TABLE kv RENAME TO kv_old_layout")
                db.execute(_TABLE)
                db.execute("INSERT INTO kv SELECT CAST(key AS TEXT), CAST(value AS TEXT), version, expires FROM kv_old_layout")
                db.execute("DROP TABLE kv_old_layout")
                db.execute(_INDEX)
            elif layout == 0:
                db.execute(_TABLE)
                db.execute(_INDEX)
            elif layout != _LAYOUT:
                raise BackendError(f"kv file {self.path} has layout {layout}, which this keel does not know (it "
                                   f"writes {_LAYOUT}): upgrade keel, or move the file away and rebuild the views")
            db.execute(f"PRAGMA user_version = {_LAYOUT}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _translate(self, exc: sqlite3.Error) -> BackendError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            hint = f"another process held the write lock longer than busy_timeout={self._busy_timeout}s; retry, or raise busy_timeout"
        elif isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
            hint = "the file is not a keel kv database or is damaged; check the `kv` URL, or move the file away and rebuild the views"
        else:
            hint = "check that the directory is writable, the disk is not full, and the file is on a local filesystem (WAL needs one)"
        return BackendError(f"kv file {self.path}: {text}: {hint}")


def _forget_connections(ref: weakref.ref[FileKeyValue]) -> None:
    """In a forked child, drop the parent's connections unused: SQLite must not use them across fork."""
    kv = ref()
    if kv is not None:
        kv._local = threading.local()
        kv._connections = []
        kv._lock = threading.Lock()


def _scan_page(db: sqlite3.Connection, low: str, high: str | None, after: str | None, size: int,
               now: float) -> list[tuple[str, bytes]]:
    sql, args = _range_sql(low, high)
    if after is not None:
        sql, args = sql + " AND key > ?", [*args, after]
    rows = db.execute(f"SELECT key, value FROM kv WHERE {sql} AND {_LIVE} ORDER BY key LIMIT ?", (*args, now, size))
    return [(k.decode(), bytes(v)) for k, v in rows]


def _range_sql(low: str, high: str | None) -> tuple[str, list[Any]]:
    if high is None:
        return "key >= ?", [low]
    return "key >= ? AND key < ?", [low, high]


def _key_range(prefix: str) -> tuple[str, str | None]:
    """The key range ``[low, high)`` (code point order) holding exactly the keys that start with ``prefix``.

    ``high`` is the shortest string greater than every extension of ``prefix``: drop trailing
    U+10FFFF, then take the next code point after the last one, skipping the surrogates, which
    UTF-8 cannot hold (None when there is no upper bound).
    """
    stem = prefix.rstrip("\U0010ffff")
    if not stem:
        return prefix, None
    following = ord(stem[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:
        following = 0xE000
    return prefix, stem[:-1] + chr(following)


def _expiry(ttl: float | None, now: float) -> float | None:
    if ttl is None:
        return None
    if not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return now + ttl


def _checked_version(version: int) -> int:
    if not _MIN_VERSION <= version <= _MAX_VERSION:
        raise ValueError(f"kv versions are 64-bit signed integers; {version} is out of range")
    return version
