"""The lake on Delta Lake (`deltalake`, i.e. delta-rs): one table = one folder `<root>/<name>`.

`file:///abs/dir` keeps tables on local disk; `s3://bucket/prefix` keeps them on S3 (or any S3 API
server, via AWS_ENDPOINT_URL or the `endpoint_url` option).

Exactly once: an append with a writer carries a Delta transaction action (app id = writer,
version) in the same commit as its data. The check "version > last committed" is made on the
snapshot the commit is built on; if any other commit of the same writer lands in between,
delta-rs' conflict checker fails ours (`ConcurrentTransaction`), and we re-read and check again.
So two racing appends of one writer/version never both land, and no lock is needed. The writer's
metadata (e.g. bus offsets) goes into the commit's info, found back by reading the log from its
head (the writer's last commit is almost always among the newest).

A `DeltaLake` keeps one open `DeltaTable` per table so that small appends do not reload the log;
a lock serialises use of those handles, so one instance may be shared by threads. Maintenance
(`maintain`, `vacuum`) opens a handle of its own, so a long compaction does not hold that lock.
Every deltalake and object-store exception becomes a keel error in one place, `DeltaLake._errors`.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, SchemaMismatchError, TableNotFoundError
from deltalake.fs import DeltaStorageHandler

from keel.errors import ConfigError, ConflictError, KeelError, NotFoundError, SchemaError
from keel.lake._conform import canonical_schema, conform
from keel.lake._filters import columns_error, filtered
from keel.lake._storage import S3Storage, brief, local_root, s3_options, storage_error
from keel.lake.base import MIN_RETENTION, Commit, MaintenanceReport, ParquetSnapshot, TableInfo, WriterCommit
from keel.lake.maintain import check_retention

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
WRITER_KEY, WRITER_VERSION_KEY, METADATA_KEY = "keel.writer", "keel.writer_version", "keel.metadata"
_COMMIT_ATTEMPTS = 8


def open_local_lake(url: str, **options: Any) -> DeltaLake:
    """Open the lake at `file:///abs/dir` (created if absent). Takes the options of `open_s3_lake` and ignores them."""
    _check_options(options)
    return DeltaLake(local_root(url), None, url)


def open_s3_lake(url: str, **options: Any) -> DeltaLake:
    """Open the lake at `s3://bucket/prefix`. Options: `endpoint_url` (S3 API server), `env` (read instead of
    os.environ for the AWS_* settings and keys; the credential chain used without keys reads the process's own)."""
    _check_options(options)
    env: Mapping[str, str] = options.get("env") or os.environ
    root, storage = s3_options(url, env, options.get("endpoint_url"))
    lake = DeltaLake(root, storage, url)
    lake.check()  # fail now, with one clear message, if the bucket or credentials are wrong
    return lake


def _check_options(options: Mapping[str, Any]) -> None:
    unknown = set(options) - {"endpoint_url", "env"}
    if unknown:
        raise ConfigError(f"unknown lake option(s) {sorted(unknown)}; the Delta lake takes endpoint_url and env")


class DeltaLake:
    """The `keel.lake.base.Lake` contract on Delta tables; see the module docstring."""

    def __init__(self, root: str, storage: S3Storage | None, url: str) -> None:
        self.url, self._root, self._s3 = url, root.rstrip("/"), storage
        self._options: dict[str, str] | None = None
        self._tables: dict[str, DeltaTable] = {}
        self._writer_commits: dict[tuple[str, str], WriterCommit] = {}
        self._own_commits: dict[tuple[str, str], tuple[int, int]] = {}  # -> (writer version, table version)
        self._lock = threading.RLock()

    # -- admin ---------------------------------------------------------------------------------

    def create_table(self, name: str, schema: pa.Schema, partition_by: list[str] | None = None) -> None:
        """Create `name` if absent (idempotent). An existing table keeps its schema and partitioning."""
        _check_name(name)
        schema = canonical_schema(schema)
        for column in partition_by or []:
            if column not in schema.names:
                raise NotFoundError(f"cannot partition table {name!r} by {column!r}: no such column; "
                                    f"columns: {', '.join(schema.names)}")
        with self._lock, self._errors("create", name):
            if name in self._tables or DeltaTable.is_deltatable(self._uri(name), self._storage_options()):
                return
            try:
                DeltaTable.create(self._uri(name), schema, mode="ignore", partition_by=partition_by or None,
                                  storage_options=self._storage_options())
            except (DeltaError, ValueError) as exc:
                if "nvalid data type" in str(exc) or "Schema error" in str(exc):
                    raise SchemaError(f"table {name!r} cannot hold this schema ({brief(exc, 2)}); "
                                      f"use types Delta Lake stores (no time-of-day or union columns)") from exc
                raise

    def check(self) -> None:
        """Reach the lake's storage once (a listing): raise the clear error of a missing bucket, refused
        credentials or an unreachable endpoint now rather than at the first write."""
        self.list_tables()

    def list_tables(self) -> list[str]:
        with self._errors("list tables", None):
            fs = pafs.PyFileSystem(DeltaStorageHandler(self._root, self._storage_options()))
            infos = fs.get_file_info(pafs.FileSelector("", recursive=False, allow_not_found=True))
            dirs = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and _NAME.match(i.base_name))
            return [d for d in dirs if d in self._tables or DeltaTable.is_deltatable(self._uri(d), self._storage_options())]

    def describe(self, name: str) -> TableInfo:
        with self._lock, self._errors("describe", name):
            dt = self._fresh(name)
            adds = pa.table(dt.get_add_actions(flatten=True))
            rows = pc.sum(adds.column("num_records")).as_py() if adds.num_rows else 0
            size = pc.sum(adds.column("size_bytes")).as_py() if adds.num_rows else 0
            partition_by = list(dt.metadata().partition_columns)
            keys = [f"partition.{c}" for c in partition_by]
            partitions = adds.select(keys).group_by(keys).aggregate([]).num_rows if keys and adds.num_rows else 1
            last = dt.history(1)
            return TableInfo(
                name=name,
                schema=_arrow_schema(dt),
                partition_by=partition_by,
                version=dt.version(),
                rows=int(rows or 0),
                files=adds.num_rows,
                size_bytes=int(size or 0),
                last_commit=_timestamp(last[0]["timestamp"]) if last else None,
                partitions=partitions,
            )

    # -- write ---------------------------------------------------------------------------------

    def append(self, name: str, data: pa.Table | pa.RecordBatch, *, writer: str | None = None,
               version: int | None = None, metadata: dict[str, str] | None = None) -> bool:
        return self._write("append", name, data, writer, version, metadata)

    def overwrite(self, name: str, data: pa.Table | pa.RecordBatch, *, writer: str | None = None,
                  version: int | None = None, metadata: dict[str, str] | None = None) -> bool:
        """Replace the table's rows by `data` in one commit; same schema and exactly-once rules as `append`."""
        return self._write("overwrite", name, data, writer, version, metadata)

    def _write(self, mode: str, name: str, data: pa.Table | pa.RecordBatch, writer: str | None,
               version: int | None, metadata: dict[str, str] | None) -> bool:
        if (writer is None) != (version is None):
            raise KeelError(f"{mode} to {name!r}: pass both writer and version for an exactly-once write, or neither")
        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        info: dict[str, Any] = {}
        if writer is not None:
            info.update({WRITER_KEY: writer, WRITER_VERSION_KEY: version})
        if metadata:
            info[METADATA_KEY] = {str(k): str(v) for k, v in metadata.items()}
        txns = [Transaction(writer, version)] if writer is not None and version is not None else None
        with self._lock, self._errors(mode, name):
            dt = self._table(name)
            # The cached snapshot may be stale; a conflict tells us, and we retry on a fresh one.
            for attempt in range(_COMMIT_ATTEMPTS):
                if writer is not None and version is not None:
                    last = self._last_version(dt, name, writer)
                    if last is not None and version <= last:
                        return False
                shaped, grows = conform(table, _arrow_schema(dt), name)
                try:
                    write_deltalake(dt, shaped, mode=mode,  # type: ignore[call-overload]
                                    schema_mode="merge" if grows else None,
                                    commit_properties=CommitProperties(custom_metadata=info, app_transactions=txns))
                except CommitFailedError:
                    if attempt == _COMMIT_ATTEMPTS - 1:
                        raise
                    dt.update_incremental()
                    continue
                except SchemaMismatchError as exc:
                    raise SchemaError(f"table {name!r} refused the data: {brief(exc, 3)}; nothing was written") from exc
                if writer is not None and version is not None:
                    self._writer_commits[(name, writer)] = WriterCommit(writer, version, dict(info.get(METADATA_KEY, {})))
                    self._own_commits[(name, writer)] = (version, dt.version())
                return True
        raise AssertionError("unreachable")

    def _last_version(self, dt: DeltaTable, name: str, writer: str) -> int | None:
        """The writer's version in the snapshot `dt` holds.

        Asking delta-rs costs ~2 ms on a table of a few hundred files; when the snapshot is still
        the one our own last commit produced, that commit's version is the answer.
        """
        own = self._own_commits.get((name, writer))
        if own is not None and own[1] == dt.version():
            return own[0]
        last = dt.transaction_version(writer)
        return None if last is None else int(last)

    def writer_version(self, name: str, writer: str) -> int | None:
        """The writer's last committed version in `name`, or None if it never committed there."""
        with self._lock, self._errors("read the writer version of", name):
            last = self._fresh(name).transaction_version(writer)
            return None if last is None else int(last)

    def writer_commit(self, name: str, writer: str) -> WriterCommit | None:
        """The writer's last committed version and its metadata, or None if it never committed."""
        with self._lock, self._errors("read the writer commit of", name):
            dt = self._fresh(name)
            last = dt.transaction_version(writer)
            if last is None:
                return None
            cached = self._writer_commits.get((name, writer))
            if cached is not None and cached.version == last:
                return cached
            found = WriterCommit(writer, last, self._find_metadata(dt, name, writer, last))
            self._writer_commits[(name, writer)] = found
            return found

    def _find_metadata(self, dt: DeltaTable, name: str, writer: str, version: int) -> dict[str, str]:
        limit = 16
        while True:
            commits = dt.history(limit)
            for commit in commits:
                if commit.get(WRITER_KEY) == writer and int(commit.get(WRITER_VERSION_KEY, -1)) == version:
                    return {str(k): str(v) for k, v in (commit.get(METADATA_KEY) or {}).items()}
            if len(commits) < limit:
                raise NotFoundError(
                    f"table {name!r}: writer {writer!r} committed version {version}, but that commit is no longer "
                    f"in the table's log (older than delta.logRetentionDuration); its metadata is lost: restart "
                    f"the writer from a known position")
            limit *= 4

    def delete(self, name: str, predicate: str) -> int:
        """Delete rows matching the SQL predicate; return how many were deleted."""
        with self._lock, self._errors("delete from", name):
            dt = self._fresh(name)
            for attempt in range(_COMMIT_ATTEMPTS):
                try:
                    metrics = dt.delete(predicate)
                    return int(metrics.get("num_deleted_rows", 0))
                except CommitFailedError:
                    if attempt == _COMMIT_ATTEMPTS - 1:
                        raise
                    dt.update_incremental()
                except DeltaError as exc:
                    if "No field named" in str(exc):
                        raise columns_error(name, _arrow_schema(dt).names, brief(exc, 1), predicate) from exc
                    raise
        raise AssertionError("unreachable")

    # -- read ----------------------------------------------------------------------------------

    def read(self, name: str, columns: list[str] | None = None, filter: str | None = None,
             version: int | None = None, as_of: datetime | None = None) -> pa.Table:
        if version is None and as_of is None:
            with self._lock, self._errors("read", name):
                dt = self._fresh(name)
                schema, dataset = _arrow_schema(dt), dt.to_pyarrow_dataset()
        else:
            dt = self._snapshot(name, version, as_of)
            with self._errors("read", name):
                schema, dataset = _arrow_schema(dt), dt.to_pyarrow_dataset()
        unknown = [c for c in columns or [] if c not in schema.names]
        if unknown:
            raise NotFoundError(f"table {name!r} has no column {unknown[0]!r}; columns: {', '.join(schema.names)}")
        with self._errors("read", name):
            if filter is None:
                return dataset.to_table(columns=columns)
            return filtered(dataset, name, columns, filter)

    def dataset(self, name: str) -> pads.Dataset:
        """A pyarrow dataset of the table's current version, for DuckDB / Polars to scan lazily."""
        with self._lock, self._errors("read", name):
            return self._fresh(name).to_pyarrow_dataset()

    def history(self, name: str, limit: int | None = None) -> list[Commit]:
        """Commits, newest first: version, timestamp, operation, parameters, metrics, writer info."""
        with self._lock, self._errors("read the history of", name):
            commits = self._fresh(name).history(limit)
        return [_commit_summary(c) for c in commits]

    def parquet_snapshot(self, name: str) -> ParquetSnapshot | None:
        """The latest version as local Parquet files in hive-style folders, or None if it is not one.

        SQL engines read such files natively, several times faster than through a pyarrow dataset.
        None when a reader must go through Delta: remote storage, reader features (deletion
        vectors, column mapping) or partition values escaped in their folder names.
        """
        if self._s3 is not None:
            return None
        with self._lock, self._errors("read", name):
            dt = self._fresh(name)
            if dt.protocol().min_reader_version > 1:
                return None
            partition_by = list(dt.metadata().partition_columns)
            relative = pa.table(dt.get_add_actions(flatten=False)).column("path").to_pylist()
            snapshot = ParquetSnapshot(dt.version(), [f"{self._root}/{name}/{p}" for p in relative],
                                       _arrow_schema(dt), partition_by)
        for path in relative:
            folders = path.split("/")[:-1]  # add paths are URI-encoded: any escape means "not plain"
            if "%" in path or len(folders) != len(partition_by) or any(
                    not f.startswith(f"{c}=") for f, c in zip(folders, partition_by)):
                return None
        return snapshot

    # -- maintenance ---------------------------------------------------------------------------

    def maintain(self, name: str, *, compaction: bool = True, vacuuming: bool = True, checkpointing: bool = True,
                 retention: timedelta = MIN_RETENTION, force: bool = False,
                 target_file_bytes: int | None = None) -> MaintenanceReport:
        """Delta ``OPTIMIZE`` (compact), ``VACUUM`` and a checkpoint of `name`; see `keel.lake.base.Lake.maintain`.

        A checkpoint lets opening the table read one Parquet file instead of many commit files.
        """
        started = time.perf_counter()
        check_retention(name, retention, force)
        before = self.describe(name)
        compacted = written = vacuumed = 0
        checkpoint_version: int | None = None
        if compaction:
            with self._errors("compact", name):
                metrics = self._maintenance_handle(name).optimize.compact(target_size=target_file_bytes)
            compacted, written = int(metrics.get("numFilesRemoved", 0)), int(metrics.get("numFilesAdded", 0))
        if vacuuming:
            vacuumed = len(self.vacuum(name, retention=retention, force=force))
        if checkpointing:
            with self._errors("checkpoint", name):
                dt = self._maintenance_handle(name)
                dt.create_checkpoint()
                checkpoint_version = int(dt.version())
        after = self.describe(name)
        return MaintenanceReport(
            table=name, files_before=before.files, rows=before.rows, version_before=before.version,
            files_compacted=compacted, files_written=written, files_vacuumed=vacuumed,
            checkpoint_version=checkpoint_version, files_after=after.files, version_after=after.version,
            seconds=round(time.perf_counter() - started, 3))

    def vacuum(self, name: str, *, retention: timedelta = MIN_RETENTION, force: bool = False,
               dry_run: bool = False) -> list[str]:
        """Delete files that no version younger than `retention` references; return their paths.

        Refuses a retention under 7 days unless `force` (`keel.lake.maintain.check_retention`).
        """
        check_retention(name, retention, force)
        with self._errors("vacuum", name):
            removed: list[str] = self._maintenance_handle(name).vacuum(
                retention_hours=max(int(retention.total_seconds() // 3600), 0), dry_run=dry_run,
                enforce_retention_duration=not force)
        return removed

    def _maintenance_handle(self, name: str) -> DeltaTable:
        """A new handle on the latest version of `name`, independent of the lake's own handles, so long
        maintenance runs without holding the lock."""
        with self._lock, self._errors("open", name):
            self._table(name)
            return DeltaTable(self._uri(name), storage_options=self._storage_options())

    # -- handles -------------------------------------------------------------------------------

    def _storage_options(self) -> dict[str, str] | None:
        """The object-store options now; handles opened with older credentials are dropped."""
        if self._s3 is None:
            return None
        options = self._s3.options()
        if options != self._options:
            with self._lock:
                self._tables.clear()
                self._options = options
        return options

    def _uri(self, name: str) -> str:
        return f"{self._root}/{name}"

    def _table(self, name: str) -> DeltaTable:
        options = self._storage_options()  # first: renewed credentials drop the cached handles
        dt = self._tables.get(name)
        if dt is None:
            _check_name(name)
            try:
                dt = DeltaTable(self._uri(name), storage_options=options)
            except TableNotFoundError:
                raise self._no_table(name) from None
            self._tables[name] = dt
        return dt

    def _fresh(self, name: str) -> DeltaTable:
        dt = self._table(name)
        dt.update_incremental()
        return dt

    def _snapshot(self, name: str, version: int | None, as_of: datetime | None) -> DeltaTable:
        """A new handle on an older version (the cached one stays at the head)."""
        with self._lock, self._errors("read", name):
            latest = self._fresh(name).version()
        try:
            if version is not None:
                return DeltaTable(self._uri(name), version=version, storage_options=self._storage_options())
            dt = DeltaTable(self._uri(name), storage_options=self._storage_options())
            if as_of is not None:
                dt.load_as_version(as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC))
        except (DeltaError, OSError, ValueError) as exc:
            what = f"version {version}" if version is not None else f"version as of {as_of}"
            raise NotFoundError(f"table {name!r} has no {what}; its versions are 0..{latest} "
                                f"(older ones may have been vacuumed)") from exc
        return dt

    def _no_table(self, name: str) -> NotFoundError:
        known = ", ".join(self.list_tables()) or "none"
        return NotFoundError(f"no table {name!r} in the lake {self.url}; tables: {known}")

    @contextmanager
    def _errors(self, action: str, name: str | None) -> Iterator[None]:
        """Translate deltalake / object-store exceptions into keel's, once, here."""
        try:
            yield
        except KeelError:
            raise
        except TableNotFoundError as exc:
            raise self._no_table(name or "?") from exc
        except CommitFailedError as exc:
            raise ConflictError(f"could not {action} table {name!r}: concurrent commits kept conflicting "
                                f"({brief(exc, 2)}); retry later") from exc
        except SchemaMismatchError as exc:
            raise SchemaError(f"table {name!r}: {brief(exc, 3)}; nothing was written") from exc
        except (DeltaError, OSError) as exc:
            raise storage_error(self.url, exc) from exc


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(f"table name {name!r} is not valid: use letters, digits and _ (not first), "
                          f"so it is both a folder name and a SQL name")


def _arrow_schema(dt: DeltaTable) -> pa.Schema:
    return pa.schema(dt.schema().to_arrow())


def _timestamp(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _commit_summary(commit: dict[str, Any]) -> Commit:
    summary = Commit(
        version=commit["version"],  # deltalake numbers every commit it returns
        timestamp=_timestamp(commit["timestamp"]) if "timestamp" in commit else None,
        operation=commit.get("operation"),
        parameters=commit.get("operationParameters", {}),
        metrics=commit.get("operationMetrics", {}),
    )
    if WRITER_KEY in commit:
        summary["writer"] = commit[WRITER_KEY]
        summary["writer_version"] = int(commit[WRITER_VERSION_KEY])
    if METADATA_KEY in commit:
        summary["metadata"] = dict(commit[METADATA_KEY])
    return summary


__all__ = ["DeltaLake", "ParquetSnapshot", "open_local_lake", "open_s3_lake"]
