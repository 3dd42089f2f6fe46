"""Keyed state for `@keel.stateful` processors: one row per key in a Polars frame.

    @keel.stateful(page_views, key="user_id", into=keel.view("user_totals"))
    def totals(batch, state):
        seen = batch.group_by("user_id").agg(pl.len().alias("n"))
        old = state.get(seen["user_id"], schema={"n": pl.Int64})  # user_id, n (null where new)
        new = seen.join(old, on="user_id", how="left", suffix="_old").select(
            "user_id", (pl.col("n") + pl.col("n_old").fill_null(0)).alias("n"))
        state.put(new)
        return new

Columnar by design: `get` takes a column of keys and answers a frame, `put` upserts a frame by
key. The runner saves the whole state with the offsets it covers in one durable unit (see
`keel.streaming.checkpoint.Unit`), so after a crash the state matches the position exactly.
"""

from __future__ import annotations

from typing import Any

import polars as pl


class KeyedState:
    """Rows by key. The columns are those of the first frame put; later frames may add columns."""

    def __init__(self, key: str, frame: pl.DataFrame | None = None) -> None:
        self.key = key
        self.frame = frame if frame is not None and frame.width else None

    def get(self, keys: pl.Series | list[object], schema: dict[str, Any] | None = None) -> pl.DataFrame:
        """One row per distinct key asked for, in the order asked: the stored columns (null if none).

        `schema` names columns the answer must have even before any state was put (null-filled)."""
        wanted = pl.DataFrame({self.key: keys}).unique(maintain_order=True)
        if self.frame is not None:
            wanted = wanted.with_columns(pl.col(self.key).cast(self.frame.schema[self.key]))
            wanted = wanted.join(self.frame, on=self.key, how="left", maintain_order="left")
        missing = {c: t for c, t in (schema or {}).items() if c not in wanted.columns}
        return wanted.with_columns([pl.lit(None, t).alias(c) for c, t in missing.items()]) if missing else wanted

    def put(self, rows: pl.DataFrame) -> None:
        """Insert or replace the rows of their keys (the last row of a key in `rows` wins)."""
        if self.key not in rows.columns:
            raise KeyError(f"state rows need the key column {self.key!r}; got {rows.columns}")
        rows = rows.unique(self.key, keep="last", maintain_order=True)
        if self.frame is None:
            self.frame = rows
            return
        kept = self.frame.join(rows.select(self.key), on=self.key, how="anti")
        self.frame = pl.concat([kept, rows], how="diagonal_relaxed")

    def delete(self, keys: pl.Series | list[object]) -> None:
        if self.frame is not None:
            self.frame = self.frame.filter(~pl.col(self.key).is_in(pl.Series(keys).implode()))

    def __len__(self) -> int:
        return 0 if self.frame is None else self.frame.height
