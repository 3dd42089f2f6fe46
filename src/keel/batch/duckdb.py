"""The embedded batch engine: DuckDB over the lake (`keel.lake.sql.SqlSession`), grouped functions in-process.

`local://` (the default profile's `batch`) and `duckdb://` open it. Queries go to the lake's SQL
session unchanged; `map_groups` runs the query once, splits the Arrow result by key with Arrow's
hash grouping and calls the function on each group in this process.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
import pyarrow as pa

from keel.batch.base import FrameKind, GroupFunction, conform_result, group_keys
from keel.errors import ConfigError
from keel.lake.base import Lake
from keel.lake.sql import SqlSession


def open_duckdb_batch(url: str, *, lake: Lake, threads: int | None = None) -> DuckDBBatch:
    """Open DuckDB over `lake`; `threads` caps DuckDB's threads (default: one per core)."""
    rest = url.split("://", 1)[1]
    if rest.strip("/"):
        raise ConfigError(f"batch URL {url!r}: the DuckDB engine runs in-process and takes no address; "
                          "write 'duckdb://' (or 'local://')")
    return DuckDBBatch(SqlSession(lake, threads=threads))


class DuckDBBatch:
    """The `keel.batch.base.BatchEngine` contract on DuckDB; see the module docstring."""

    name = "duckdb"

    def __init__(self, session: SqlSession) -> None:
        self.session = session

    def query(self, sql: str) -> pa.Table:
        return self.session.query(sql)

    def map_groups(self, sql: str, key: str | Sequence[str], fn: GroupFunction, schema: pa.Schema,
                   *, frames: FrameKind = "arrow") -> pa.Table:
        rows = self.query(sql)
        keys = group_keys(key, rows.column_names)
        what = f"group function {getattr(fn, '__name__', fn)!r}"
        parts = [conform_result(fn(pl.from_arrow(group) if frames == "polars" else group), schema, what)
                 for group in split_groups(rows, keys)]
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def tables(self) -> list[str]:
        return self.session.tables()

    def close(self) -> None:
        self.session.close()


def split_groups(rows: pa.Table, keys: list[str]) -> list[pa.Table]:
    """`rows` split into one table per distinct value of `keys` (null keys form one group), rows in order."""
    if rows.num_rows == 0:
        return []
    index = "__keel_row__"
    numbered = rows.select(keys).append_column(index, pa.array(range(rows.num_rows), pa.int64()))
    groups = numbered.group_by(keys, use_threads=False).aggregate([(index, "list")])
    lists = groups.column(f"{index}_list").combine_chunks()
    ordered = rows.take(lists.flatten())  # one take; each group is then a slice of it
    offsets = lists.offsets.to_numpy()
    return [ordered.slice(int(start), int(end - start)) for start, end in zip(offsets[:-1], offsets[1:])]
