"""SQL over the lake: a DuckDB session in which every lake table is queryable by its name.

Tables are bound lazily: before each query the session finds the lake tables its text names and
(re)binds those that are lake tables to their latest version, so a notebook sees new commits
without reconnecting. How a table is bound, chosen by measurement (benchmarks/bench_lake_sql.py,
10M rows, group by item_id, 2 cores): DuckDB reading the snapshot's Parquet files natively runs at
~1.0-1.5x of DuckDB over plain Parquet; registering deltalake's pyarrow dataset runs at ~0.35x and
Polars' ``scan_delta`` at ~0.5x. So a table whose snapshot is plain local Parquet files
(`DeltaLake.parquet_snapshot`) becomes a view over ``read_parquet``; any other (on S3, where DuckDB
would need its httpfs extension, which keel does not download at run time) is scanned through the
lake's pyarrow dataset.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import pyarrow as pa

from keel.errors import NotFoundError, QueryError
from keel.lake._filters import quote
from keel.lake.base import Lake, ParquetSnapshot

_DUCKDB_TYPES = {
    pa.string(): "VARCHAR", pa.date32(): "DATE", pa.bool_(): "BOOLEAN", pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
}
_MISSING_TABLE = re.compile(r"Table with name (\S+) does not exist", re.IGNORECASE)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MISSING_COLUMN = re.compile(r'Referenced column "?([^"\s]+)"? not found', re.IGNORECASE)


@runtime_checkable
class _HasParquetSnapshot(Protocol):
    def parquet_snapshot(self, name: str) -> ParquetSnapshot | None: ...


class SqlSession:
    """DuckDB over a `Lake`. ``query(sql)`` returns an Arrow table; close it (or use ``with``) when done."""

    def __init__(self, lake: Lake, *, threads: int | None = None) -> None:
        import duckdb

        self._duckdb = duckdb
        self.lake = lake
        config: dict[str, str | bool | int | float | list[str]] = {"threads": threads} if threads else {}
        self._con = duckdb.connect(config=config)
        self._con.execute("SET TimeZone = 'UTC'")
        self._bound: dict[str, tuple[str, int | None]] = {}  # table -> (how, version)
        self._known: set[str] | None = None  # the lake's tables, listed again when a query misses one

    def query(self, sql: str) -> pa.Table:
        """Run one SQL statement over the lake's tables; the result (empty for statements) as Arrow."""
        if self._known is None:
            self._known = set(self.lake.list_tables())
        referenced = self._bind(sql)
        try:
            return self._run(sql)
        except NotFoundError as missing:
            # A table created since the session listed them: list again, and retry once.
            self._known = set(self.lake.list_tables())
            if self._bind(sql) == referenced:
                raise missing from None
            return self._run(sql)

    def _run(self, sql: str) -> pa.Table:
        duckdb = self._duckdb
        try:
            relation = self._con.sql(sql)
            return relation.to_arrow_table() if relation is not None else pa.table({})
        except duckdb.CatalogException as exc:
            missing = _MISSING_TABLE.search(str(exc))
            if missing:
                known = ", ".join(sorted(self._known or ())) or "none"
                raise NotFoundError(f"no table {missing.group(1)} in the lake; tables: {known}") from exc
            raise QueryError(_first_line(exc)) from exc
        except duckdb.BinderException as exc:
            column = _MISSING_COLUMN.search(str(exc))
            if column:
                tables = sorted(self._identifiers(sql) & (self._known or set()))
                known = "; ".join(f"columns of {t}: {', '.join(self._columns(t))}" for t in tables)
                raise NotFoundError(f"no column {column.group(1)!r} ({_first_line(exc)}); {known}") from exc
            raise QueryError(_first_line(exc)) from exc
        except duckdb.Error as exc:
            raise QueryError(_first_line(exc)) from exc

    sql = query

    def tables(self) -> list[str]:
        return self.lake.list_tables()

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- binding -------------------------------------------------------------------------------

    def _bind(self, sql: str) -> list[str]:
        """Bind every lake table named in `sql` to its latest version; return their names.

        A word of the text that names a lake table is enough: binding one too many costs little,
        and unlike DuckDB's own table-name extraction it needs no parse of a query whose tables
        are not bound yet.
        """
        referenced = sorted(self._identifiers(sql) & (self._known or set()))
        for name in referenced:
            self._bind_table(name)
        return referenced

    @staticmethod
    def _identifiers(sql: str) -> set[str]:
        return set(_IDENTIFIER.findall(sql))

    def _columns(self, name: str) -> list[str]:
        return list(self._con.sql(f"SELECT * FROM {quote(name)} LIMIT 0").columns)

    def _bind_table(self, name: str) -> None:
        snapshot = self.lake.parquet_snapshot(name) if isinstance(self.lake, _HasParquetSnapshot) else None
        if snapshot is not None and snapshot.files and all(
                snapshot.schema.field(c).type in _DUCKDB_TYPES for c in snapshot.partition_by):
            if self._bound.get(name) == ("files", snapshot.version):
                return
            self._unbind(name)
            self._con.execute(f"CREATE OR REPLACE VIEW {quote(name)} AS {_files_scan(snapshot)}")
            self._bound[name] = ("files", snapshot.version)
            return
        self._unbind(name)
        self._con.register(name, self.lake.dataset(name))
        self._bound[name] = ("dataset", None)

    def _unbind(self, name: str) -> None:
        how = self._bound.pop(name, (None, None))[0]
        if how == "files":
            self._con.execute(f"DROP VIEW IF EXISTS {quote(name)}")
        elif how == "dataset":
            self._con.unregister(name)


def _files_scan(snapshot: ParquetSnapshot) -> str:
    files = ", ".join("'" + f.replace("'", "''") + "'" for f in snapshot.files)
    options = "union_by_name = true"
    if snapshot.partition_by:
        types = ", ".join(f"{quote(c)}: '{_DUCKDB_TYPES[snapshot.schema.field(c).type]}'"
                          for c in snapshot.partition_by)
        options += f", hive_partitioning = true, hive_types = {{{types}}}"
    columns = ", ".join(quote(n) for n in snapshot.schema.names)
    return f"SELECT {columns} FROM read_parquet([{files}], {options})"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0]


def tables_summary(lake: Lake) -> list[dict[str, Any]]:
    """One row per lake table: rows, size, files, version, last commit, freshness, maintenance due."""
    from keel.lake.maintain import needs_maintenance

    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for name in lake.list_tables():
        info = lake.describe(name)
        age = (now - info.last_commit).total_seconds() if info.last_commit else None
        rows.append({
            "table": name,
            "rows": info.rows,
            "size": _human_bytes(info.size_bytes),
            "size_bytes": info.size_bytes,
            "files": info.files,
            "version": info.version,
            "last_commit": info.last_commit.isoformat(timespec="seconds") if info.last_commit else None,
            "freshness": _human_age(age),
            "freshness_s": age,
            "needs_maintenance": needs_maintenance(info),
        })
    return rows


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _human_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"
