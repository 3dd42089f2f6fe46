"""The embedded `file://` bus: partitioned, CRC-checked, fsync'd logs in a local directory.

Layout::

    <root>/streams/<stream>/stream.json          the StreamConfig (written atomically)
    <root>/streams/<stream>/p<N>/<base>.seg      segments of partition N (see _frame, _log)
    <root>/streams/<stream>/p<N>/state           shared state page (see _shared)
    <root>/streams/<stream>/groups/<group>/...   consumer groups (see _groups)

Guarantees and their limits:

* ``produce`` returns after the fsync that covers its records (group commit: concurrent producers,
  threads or processes, share fsyncs). After an fsync error the bus raises DurabilityError for
  every later produce until it is reopened.
* Several processes on one machine may produce to and consume from the same bus: appends to a
  partition are serialized by a lock (see _log). NFS and other network file systems are not
  supported (flock and fsync semantics).
* Consumers read only fsync'd records. A consumer in the process that produced wakes at once
  (Condition); one in another process notices within ``poll_interval`` seconds (default 5 ms).
* Retention deletes whole sealed segments: by age (time since the segment was last written) and
  by size (per partition, as in Kafka). A consumer whose position was deleted resumes at the
  oldest record kept. A segment rolls when it would exceed ``segment_bytes`` or is older than
  ``min(segment_ms, retention_ms)``.
* Deleting a stream while other processes use it is not supported: stop them first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
import weakref
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from isal.isal_zlib import crc32

from keel.bus import _frame
from keel.bus._consumer import FileConsumer
from keel.bus._groups import read_committed
from keel.bus._log import Frame, Health, PartitionLog, list_segments, now_ms
from keel.bus._shared import FileLock, fsync_dir
from keel.bus.base import (
    DLQ_SUFFIX,
    HEADERS_TYPE,
    TIMESTAMP_TYPE,
    PartitionInfo,
    Produced,
    StreamConfig,
    StreamInfo,
    conform_produce,
    dlq_name,
    partition_for,
)
from keel.schemes import file_path
from keel.errors import (
    BackendError,
    ConfigError,
    ConflictError,
    NotFoundError,
)

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")
FRAME_BYTES = 64 << 20  # a produce bigger than this per partition is split into several frames
_OPTIONS = {"segment_bytes", "segment_ms", "poll_interval", "rebalance_interval"}


def open_file_bus(url: str, **options: object) -> FileBus:
    """Open (creating if needed) the bus in the directory of `url` (``file:///abs/dir``).

    Options: ``segment_bytes`` (default 64 MiB), ``segment_ms`` (default 7 days),
    ``poll_interval`` seconds between cross-process checks of waiting consumers (default 0.005),
    ``rebalance_interval`` seconds between consumer-group checks (default 0.2).
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ConfigError(f"unknown file:// bus options {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    return FileBus(file_path(url), **options)  # type: ignore[arg-type]


def check_name(kind: str, name: str) -> None:
    if not _NAME.match(name) or ".." in name:
        raise ConfigError(
            f"{kind} name {name!r} is not allowed: use letters, digits, '_', '-' and '.', at most 200 characters"
        )


class _Stream:
    """A stream as this process knows it: its config and its partitions' logs (opened lazily)."""

    def __init__(self, name: str, path: Path, config: StreamConfig) -> None:
        self.name, self.dir, self.config = name, path, config
        self.logs: dict[int, PartitionLog] = {}
        self.lock = threading.Lock()
        self.round_robin = 0
        self.retention_checked = 0.0


class FileBus:
    """The `file://` engine of ``keel.bus.base.Bus`` (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        segment_bytes: int = 64 << 20,
        segment_ms: int = 7 * 24 * 3600 * 1000,
        poll_interval: float = 0.005,
        rebalance_interval: float = 0.2,
    ) -> None:
        self.root = root
        self.segment_bytes, self.segment_ms = int(segment_bytes), int(segment_ms)
        self.poll_interval, self.rebalance_interval = float(poll_interval), float(rebalance_interval)
        self.health = Health()
        try:
            (root / "streams").mkdir(parents=True, exist_ok=True)
            self._meta_lock = FileLock(root / ".meta.lock")
        except OSError as exc:
            raise BackendError(f"cannot open the bus directory {root} ({exc}); check the path and its permissions") from exc
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._data = threading.Condition()
        self._data_gen = 0
        self._consumers: weakref.WeakSet[FileConsumer] = weakref.WeakSet()
        self._closed = False

    # --- streams --------------------------------------------------------------------------------

    def _stream_dir(self, name: str) -> Path:
        return self.root / "streams" / name

    def create_stream(self, config: StreamConfig) -> None:
        """Create `config.name` and its dead-letter stream; idempotent.

        An existing stream with another partition count raises ConflictError; one with other
        retention settings gets the new ones (the declarations are the source of truth).
        """
        self._check_open()
        check_name("stream", config.name)
        if config.partitions < 1:
            raise ConfigError(f"stream {config.name!r}: partitions must be at least 1, not {config.partitions}")
        for value in (config.retention_ms, config.retention_bytes):
            if value is not None and value <= 0:
                raise ConfigError(f"stream {config.name!r}: retention must be positive or None, not {value}")
        with self._meta_lock:
            if not config.name.endswith(DLQ_SUFFIX):
                self._create_one(StreamConfig(dlq_name(config.name), 1))
            self._create_one(config)

    def _create_one(self, config: StreamConfig) -> None:
        path = self._stream_dir(config.name)
        existing = self._read_config(config.name)
        if existing is not None:
            if existing.partitions != config.partitions:
                raise ConflictError(
                    f"stream {config.name!r} exists with {existing.partitions} partition(s), not {config.partitions}; "
                    "keep the partition count, or create a stream with another name"
                )
            if existing != config:
                self._write_config(path, config)
                with self._lock:
                    self._streams.pop(config.name, None)
            return
        tmp = self.root / "streams" / f".new-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            for p in range(config.partitions):
                (tmp / f"p{p}").mkdir()
                fd = os.open(tmp / f"p{p}" / f"{0:020d}.seg", os.O_WRONLY | os.O_CREAT, 0o644)
                os.close(fd)
                fsync_dir(tmp / f"p{p}")
            self._write_config(tmp, config)
            os.rename(tmp, path)
            fsync_dir(self.root / "streams")
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BackendError(f"could not create stream {config.name!r} in {self.root} ({exc})") from exc

    @staticmethod
    def _write_config(path: Path, config: StreamConfig) -> None:
        tmp = path / f".stream.json.{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            json.dump({"format": 1, **asdict(config)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path / "stream.json")
        fsync_dir(path)

    def _read_config(self, name: str) -> StreamConfig | None:
        try:
            doc = json.loads((self._stream_dir(name) / "stream.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BackendError(f"stream {name!r}: cannot read its stream.json ({exc})") from exc
        doc.pop("format", None)
        return StreamConfig(**doc)

    def _stream(self, name: str) -> _Stream:
        self._check_open()
        with self._lock:
            st = self._streams.get(name)
            if st is None:
                config = self._read_config(name) if _NAME.match(name) else None
                if config is None:
                    known = ", ".join(self.list_streams()) or "none"
                    raise NotFoundError(f"no stream {name!r} on the bus at {self.root} (streams: {known}); create it first")
                st = self._streams[name] = _Stream(name, self._stream_dir(name), config)
            return st

    def _log(self, st: _Stream, partition: int) -> PartitionLog:
        with st.lock:
            plog = st.logs.get(partition)
            if plog is None:
                roll = min(self.segment_ms, st.config.retention_ms or self.segment_ms)
                plog = PartitionLog(st.name, partition, st.dir / f"p{partition}", self.health, self.segment_bytes, roll)
                st.logs[partition] = plog
            return plog

    def list_streams(self) -> list[str]:
        self._check_open()
        base = self.root / "streams"
        return sorted(n for n in os.listdir(base) if not n.startswith(".") and (base / n / "stream.json").exists())

    def describe(self, stream: str) -> StreamInfo:
        st = self._stream(stream)
        parts = []
        for p in range(st.config.partitions):
            plog = self._log(st, p)
            plog.ensure_recovered()
            segments = list_segments(plog.dir)
            end = plog.state.synced
            parts.append(PartitionInfo(p, min(segments[0], end) if segments else end, end))
        return StreamInfo(st.config, parts, read_committed(st.dir))

    def delete_stream(self, stream: str) -> None:
        """Delete `stream`, its dead-letter stream and their consumer groups."""
        self._check_open()
        with self._meta_lock:
            if self._read_config(stream) is None:
                raise NotFoundError(f"no stream {stream!r} to delete on the bus at {self.root}")
            parent = stream[: -len(DLQ_SUFFIX)]
            if stream.endswith(DLQ_SUFFIX) and self._read_config(parent) is not None:
                raise ConflictError(
                    f"{stream!r} is the dead-letter stream of {parent!r} and lives as long as it; "
                    "delete that stream, or purge the dead letters (keel dlq purge)"
                )
            names = [stream] if stream.endswith(DLQ_SUFFIX) else [stream, dlq_name(stream)]
            for name in names:
                with self._lock:
                    st = self._streams.pop(name, None)
                if st is not None:
                    for plog in st.logs.values():
                        plog.close()
                path = self._stream_dir(name)
                if path.exists():
                    trash = self.root / "streams" / f".deleted-{uuid.uuid4().hex}"
                    os.rename(path, trash)
                    fsync_dir(self.root / "streams")
                    shutil.rmtree(trash, ignore_errors=True)

    # --- producing ------------------------------------------------------------------------------

    def produce(self, stream: str, batch: pa.RecordBatch | pa.Table) -> Produced:
        self.health.check()
        st = self._stream(stream)
        records = normalize(batch)
        n = records.num_rows
        if n == 0:
            return Produced(np.zeros(0, np.int32), np.zeros(0, np.int64))
        nparts = st.config.partitions
        if nparts == 1:
            parts = np.zeros(n, dtype=np.int32)
            groups = [(0, records, 0)]
            order = None
        else:
            keys = records.column("key")
            with st.lock:
                start = st.round_robin
                st.round_robin += keys.null_count
            parts = partition_for(keys, nparts, start)
            order = np.argsort(parts, kind="stable")
            counts = np.bincount(parts, minlength=nparts)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            ordered = records.take(pa.array(order))
            groups = [(p, ordered.slice(int(starts[p]), int(counts[p])), int(starts[p])) for p in range(nparts) if counts[p]]
        bases = np.zeros(nparts, dtype=np.int64)
        pending = []
        for p, sub, _ in groups:
            frames = []
            for piece in _split(sub):
                ts = piece.column("timestamp").view(pa.int64()).to_numpy()
                payload = piece.serialize()
                frames.append(Frame(payload, crc32(payload), payload.size, piece.num_rows, int(ts.min()), int(ts.max())))
            plog = self._log(st, p)
            bases[p], end = plog.append(frames)
            pending.append((plog, end))
        for plog, end in pending:
            plog.sync_to(end)
        with self._data:
            self._data_gen += 1
            self._data.notify_all()
        self._maybe_enforce_retention(st)
        if order is None:
            return Produced(parts, np.arange(bases[0], bases[0] + n, dtype=np.int64))
        sorted_parts = parts[order]
        rank = np.arange(n, dtype=np.int64) - np.repeat([g[2] for g in groups], [g[1].num_rows for g in groups])
        offsets = np.empty(n, dtype=np.int64)
        offsets[order] = bases[sorted_parts] + rank
        return Produced(parts, offsets)

    def _maybe_enforce_retention(self, st: _Stream) -> None:
        if st.config.retention_ms is None and st.config.retention_bytes is None:
            return
        now = time.monotonic()
        if now - st.retention_checked >= 1.0:
            st.retention_checked = now
            self.enforce_retention(st.name)

    def enforce_retention(self, stream: str) -> dict[int, list[int]]:
        """Apply the stream's retention now; returns partition -> base offsets of deleted segments."""
        st = self._stream(stream)
        return {
            p: self._log(st, p).enforce_retention(st.config.retention_ms, st.config.retention_bytes)
            for p in range(st.config.partitions)
        }

    # --- consuming ------------------------------------------------------------------------------

    def consumer(self, stream: str, group: str, partitions: list[int] | None = None) -> FileConsumer:
        """Join `group` on `stream`. `partitions=None` lets the group assign partitions; a list pins them."""
        st = self._stream(stream)
        check_name("group", group)
        if partitions is not None:
            bad = [p for p in partitions if not 0 <= p < st.config.partitions]
            if bad:
                raise NotFoundError(f"stream {stream!r} has partitions 0..{st.config.partitions - 1}, not {bad}")
        consumer = FileConsumer(self, st.name, st.dir, st.config.partitions, group, partitions)
        self._consumers.add(consumer)
        return consumer

    def partition_log(self, stream: str, partition: int) -> PartitionLog:
        """The partition's log object (shared by this bus's producers and consumers)."""
        return self._log(self._stream(stream), partition)

    def wait_for_data(self, generation: int, timeout: float) -> None:
        """Sleep until this bus fsyncs a produce after `generation`, or `timeout` seconds."""
        with self._data:
            if self._data_gen == generation:
                self._data.wait(timeout)

    @property
    def data_generation(self) -> int:
        return self._data_gen

    # --- lifecycle ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"the bus at {self.root} is closed; open it again with keel.bus.open_bus")

    def close(self) -> None:
        if self._closed:
            return
        for consumer in list(self._consumers):
            consumer.close()
        with self._lock:
            for st in self._streams.values():
                for plog in st.logs.values():
                    plog.close()
            self._streams.clear()
        self._meta_lock.close()
        self._closed = True


def _split(batch: pa.RecordBatch) -> list[pa.RecordBatch]:
    """`batch` cut into frames of at most about FRAME_BYTES."""
    size = batch.nbytes
    if size <= FRAME_BYTES or batch.num_rows == 1:
        return [batch]
    step = max(1, batch.num_rows * FRAME_BYTES // size)
    return [batch.slice(i, step) for i in range(0, batch.num_rows, step)]


def normalize(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    """`batch` as one RecordBatch of the stored columns; SchemaError naming what is wrong."""
    table = conform_produce(batch)  # checked and cast as on every engine
    names, n = table.column_names, table.num_rows

    def column(name: str, type_: pa.DataType) -> pa.Array:
        if name not in names:
            return pa.nulls(n, type_)
        return table.column(name).combine_chunks()

    value = column("value", pa.binary())
    if "timestamp" not in names:  # the common case: the append time (built as int64: 30x cheaper than fill_null)
        ts = pa.array(np.full(n, now_ms(), dtype=np.int64)).view(TIMESTAMP_TYPE)
    else:
        ts = column("timestamp", TIMESTAMP_TYPE)
        if ts.null_count:
            ts = pc.fill_null(ts, pa.scalar(now_ms(), TIMESTAMP_TYPE))
    return pa.RecordBatch.from_arrays(
        [column("key", pa.binary()), value, ts, column("headers", HEADERS_TYPE)], schema=_frame.STORED_SCHEMA
    )
