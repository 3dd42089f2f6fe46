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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa


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

    def dataset(self, name: str) -> Any:
        """A pyarrow dataset of the table's current version, for DuckDB / Polars to scan lazily."""
        ...

    def delete(self, name: str, predicate: str) -> int:
        """Delete rows matching the SQL predicate; return how many were deleted."""
        ...

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]: ...
