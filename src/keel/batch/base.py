"""The batch engine: what a job's SQL and grouped Python functions run on (DuckDB or Spark).

Contract:
* ``query(sql)`` runs one SQL statement written in **DuckDB's dialect** over the lake's tables, each
  queryable by its name at its latest version when the query starts, and returns the result as one
  Arrow table (no rows: an empty table with the result's columns). An engine whose own dialect differs
  translates first; a construct it cannot translate raises ``UntranslatableError`` naming it, before
  anything runs. An unknown table or column raises ``NotFoundError`` naming it; any other invalid query
  ``QueryError``; an engine that fails (a cluster gone) ``BackendError``.
* ``map_groups(sql, key, fn, schema)`` runs `sql` as ``query`` does, splits its rows into groups of
  equal `key` values (rows whose key is null form one group, as in SQL's GROUP BY) and calls `fn` once
  per group with that group's rows (an Arrow table, or a Polars frame with ``frames="polars"``; all
  the query's columns, key included). `fn` returns an Arrow table or a Polars frame holding at least
  `schema`'s columns; the results, cast to `schema`, come back as one Arrow table in no given order.
  A query with no rows calls `fn` never and returns an empty table of `schema`. `fn` must depend only
  on its group: engines call it in other processes (Spark's Python workers), in any order.
* ``tables()`` lists the lake tables a query can name. ``close()`` releases the engine's sessions;
  the engine is not used after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol, TypeAlias, runtime_checkable

import polars as pl
import pyarrow as pa

from keel.errors import NotFoundError, SchemaError

Frame: TypeAlias = "pa.Table | pl.DataFrame"
GroupFunction: TypeAlias = Callable[..., Frame]  # (one group's rows as an Arrow table or a Polars frame) -> rows
FrameKind: TypeAlias = Literal["arrow", "polars"]


@runtime_checkable
class BatchEngine(Protocol):
    name: str  # "duckdb" or "spark", for messages and the status table

    def query(self, sql: str) -> pa.Table: ...

    def map_groups(self, sql: str, key: str | Sequence[str], fn: GroupFunction, schema: pa.Schema,
                   *, frames: FrameKind = "arrow") -> pa.Table: ...

    def tables(self) -> list[str]: ...

    def close(self) -> None: ...


def group_keys(key: str | Sequence[str], columns: Sequence[str]) -> list[str]:
    """The key columns of a `map_groups` call over a result with `columns`: at least one, each of them there."""
    keys = [key] if isinstance(key, str) else list(key)
    if not keys:
        raise ValueError("map_groups needs at least one key column")
    missing = [k for k in keys if k not in columns]
    if missing:
        raise NotFoundError(f"map_groups: no key column(s) {missing} in the query's result "
                            f"(columns: {', '.join(columns)})")
    return keys


def conform_result(result: object, schema: pa.Schema, what: str) -> pa.Table:
    """A group function's result as an Arrow table of exactly `schema` (columns chosen and cast)."""
    if isinstance(result, pl.DataFrame):
        result = result.to_arrow()
    if not isinstance(result, pa.Table):
        raise SchemaError(f"{what} returned {type(result).__name__}; return an Arrow table or a Polars DataFrame")
    missing = [n for n in schema.names if n not in result.column_names]
    if missing:
        raise SchemaError(f"{what} returned no column(s) {missing} of its declared schema "
                          f"(it returned: {', '.join(result.column_names) or 'none'})")
    try:
        return result.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise SchemaError(f"{what} returned columns that do not fit its declared schema: {exc}") from exc
