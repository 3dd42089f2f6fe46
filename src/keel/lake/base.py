"""The data lake: ACID tables of Arrow data with history (Delta Lake on disk or S3).

Contract:
* ``append`` is atomic: afterwards the table holds all of `data` or, if it raised, none of it.
* Exactly once: an append that carries ``writer`` and ``version`` commits only if ``version`` is
  greater than the writer's last committed version (stored in the same commit, as a Delta
  transaction app-id/version), and otherwise is a no-op that returns False. ``writer_version``
  reads the last committed version back; ``metadata`` given with it (e.g. bus offsets) is stored
  in the commit and returned by ``writer_commit``.
* Schemas: data is checked against the table's schema. New nullable columns evolve the table;
  a missing required column, a changed type or a renamed column raises ``SchemaError`` and
  writes nothing.
* ``read`` returns an Arrow table; ``filter`` is a SQL boolean expression over the table's columns.
* Unknown tables and columns raise ``NotFoundError`` naming them and listing what exists.
* ``maintain`` compacts, vacuums and checkpoints a table without changing what its current version
  reads (rows, writer commits); vacuum never goes below ``MIN_RETENTION`` unless forced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NotRequired, Protocol, TypedDict, runtime_checkable

import pyarrow as pa
import pyarrow.dataset as pads

# Vacuum removes what time travel reads: below Delta's own default of 7 days, a reader or a
# `read(as_of=...)` within the window would fail, so `maintain` refuses it unless forced.
MIN_RETENTION = timedelta(days=7)


@dataclass(frozen=True)
class TableInfo:
    name: str
    schema: pa.Schema
    partition_by: list[str]
    version: int
    rows: int
    files: int
    size_bytes: int
    last_commit: datetime | None
    partitions: int = 1  # distinct partition values holding files (1 if unpartitioned)


@dataclass(frozen=True)
class WriterCommit:
    writer: str
    version: int
    metadata: dict[str, str]


@dataclass(frozen=True)
class ParquetSnapshot:
    """One version of a table as plain Parquet files; partition values are in the folder names."""

    version: int
    files: list[str]
    schema: pa.Schema
    partition_by: list[str]


class Commit(TypedDict):
    """One commit of a table's history (`Lake.history`)."""

    version: int
    timestamp: datetime | None
    operation: str | None
    parameters: dict[str, object]
    metrics: dict[str, object]
    writer: NotRequired[str]  # the writer and version of an exactly-once write
    writer_version: NotRequired[int]
    metadata: NotRequired[dict[str, str]]  # what that write stored with its commit


class MaintenanceReport(TypedDict):
    """What `Lake.maintain` did to one table, for a scheduler to log or the CLI to show."""

    table: str
    files_before: int
    rows: int
    version_before: int
    files_compacted: int  # small files rewritten ...
    files_written: int  # ... into these
    files_vacuumed: int  # files no version younger than the retention referenced, deleted
    checkpoint_version: int | None  # None if no checkpoint was asked for
    files_after: int
    version_after: int
    seconds: float


@runtime_checkable
class Lake(Protocol):
    def create_table(self, name: str, schema: pa.Schema, partition_by: list[str] | None = None) -> None:
        """Create `name` if absent (idempotent). An existing table keeps its schema."""
        ...

    def list_tables(self) -> list[str]: ...

    def describe(self, name: str) -> TableInfo: ...

    def append(
        self,
        name: str,
        data: pa.Table | pa.RecordBatch,
        *,
        writer: str | None = None,
        version: int | None = None,
        metadata: dict[str, str] | None = None,
    ) -> bool: ...

    def overwrite(
        self,
        name: str,
        data: pa.Table | pa.RecordBatch,
        *,
        writer: str | None = None,
        version: int | None = None,
        metadata: dict[str, str] | None = None,
    ) -> bool:
        """Replace all rows by `data` in one commit; the schema and exactly-once rules of `append`."""
        ...

    def check(self) -> None:
        """Reach the lake's storage once, cheaply: raises the clear ``KeelError`` of a missing bucket,
        refused credentials or an unreachable endpoint (callers use it before saying "up")."""
        ...

    def writer_version(self, name: str, writer: str) -> int | None:
        """The writer's last committed version in `name`, or None if it never committed there."""
        ...

    def writer_commit(self, name: str, writer: str) -> WriterCommit | None:
        """The writer's last committed version and the metadata stored with it; None if it never wrote."""
        ...

    def read(
        self,
        name: str,
        columns: list[str] | None = None,
        filter: str | None = None,
        version: int | None = None,
        as_of: datetime | None = None,
    ) -> pa.Table: ...

    def dataset(self, name: str) -> pads.Dataset:
        """A pyarrow dataset of the table's current version, for DuckDB / Polars to scan lazily."""
        ...

    def delete(self, name: str, predicate: str) -> int:
        """Delete rows matching the SQL predicate; return how many were deleted."""
        ...

    def history(self, name: str, limit: int | None = None) -> list[Commit]:
        """Commits, newest first."""
        ...

    def maintain(
        self,
        name: str,
        *,
        compaction: bool = True,
        vacuuming: bool = True,
        checkpointing: bool = True,
        retention: timedelta = MIN_RETENTION,
        force: bool = False,
        target_file_bytes: int | None = None,
    ) -> MaintenanceReport:
        """Rewrite small files into large ones (readers and concurrent appends are unaffected), delete
        files that no version younger than `retention` references, and checkpoint the latest version,
        each if asked. A `retention` under `MIN_RETENTION` is refused with a ``ConfigError`` before
        anything is done, unless `force`. Run by the scheduler for tables `keel.lake.maintain` says need it."""
        ...
