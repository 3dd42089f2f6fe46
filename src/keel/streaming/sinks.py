"""Writing a processor's rows to views, columnar: JSON values built by Polars, one upsert per batch.

View rows are frames of (key: str, version: int64, value: binary JSON). A windowed aggregation
keeps, per key, only its newest window (running or closed), because that is what the view
shows and an older window's row could never win the versioned upsert anyway; profiling showed
per-row Python (dicts, isoformat) dominating the old path.

Versions: a window's rows are versioned by its end (ms) times 1000; a closed window's final row
adds FINAL_VERSION_BONUS, so it outranks every running row of the same window, and a replay,
which writes the same versions, never regresses a value.
"""

from __future__ import annotations

import time

import msgspec
import polars as pl

from keel.kv.views import Views
from keel.streaming.windows import WEND, WSTART

FINAL_VERSION_BONUS = 999  # a closed window's view value outranks every running value of it
VIEW_ROWS = {"key": pl.String, "version": pl.Int64, "value": pl.Binary}


def empty_view_rows() -> pl.DataFrame:
    return pl.DataFrame(schema=VIEW_ROWS)


def window_view_rows(by: str, running: pl.DataFrame, closed: pl.DataFrame) -> pl.DataFrame:
    """The newest window per key, as view rows (see the module docstring for versions)."""
    frames = [f.with_columns(pl.lit(bonus, pl.Int64).alias("__bonus"))
              for f, bonus in ((running, 0), (closed, FINAL_VERSION_BONUS)) if f.height]
    if not frames:
        return empty_view_rows()
    both = pl.concat(frames, how="vertical_relaxed")
    version = pl.col(WEND).dt.epoch("ms") * 1000 + pl.col("__bonus")
    value_cols = [c for c in both.columns if c != "__bonus"]
    return (both.with_columns(version.alias("version"))
            .sort("version", maintain_order=True)  # equal versions (one window, several batches): the last wins
            .unique(by, keep="last", maintain_order=False)
            .select(pl.col(by).cast(pl.String).alias("key"), "version",
                    pl.struct(value_cols).struct.json_encode().cast(pl.Binary).alias("value")))


def keyed_view_rows(key: str, rows: pl.DataFrame) -> pl.DataFrame:
    """Rows of a stateless processor, keyed by `key`: the last row per key wins, versioned by now (ms)."""
    if rows.height == 0 or key not in rows.columns:
        return empty_view_rows()
    version = int(time.time() * 1000)
    value_cols = [c for c in rows.columns if c != key]
    return (rows.unique(key, keep="last", maintain_order=True)
            .select(pl.col(key).cast(pl.String).alias("key"), pl.lit(version, pl.Int64).alias("version"),
                    pl.struct(value_cols).struct.json_encode().cast(pl.Binary).alias("value")))


def top_view_rows(by: str, rank_by: str, top: int, running: pl.DataFrame) -> pl.DataFrame:
    """The `top` keys of the latest running window, under the key "_top"."""
    if running.height == 0:
        return empty_view_rows()
    latest = running.filter(pl.col(WSTART) == pl.col(WSTART).max())
    best = latest.sort([rank_by, by], descending=[True, False]).head(top)
    ws, we = best.get_column(WSTART)[0], best.get_column(WEND)[0]
    value = {"window_start": ws.isoformat(), "window_end": we.isoformat(),
             "items": msgspec.to_builtins(best.select(by, rank_by).to_dicts())}
    return pl.DataFrame({"key": ["_top"], "version": [int(we.timestamp() * 1000) * 1000],
                         "value": [msgspec.json.encode(value)]}, schema=VIEW_ROWS)


def newest_per_key(rows: pl.DataFrame) -> pl.DataFrame:
    """Of several view-row frames concatenated, the newest row per key (ties: the last one)."""
    if rows.height == 0:
        return rows
    return rows.sort("version", maintain_order=True).unique("key", keep="last", maintain_order=False)


def write_view_rows(views: Views, view: str, rows: pl.DataFrame) -> int:
    """Versioned upserts of view rows into the kv (one call; the kv engine batches the statements)."""
    if rows.height == 0:
        return 0
    prefix = f"{view}/"
    keys = (prefix + rows.get_column("key")).to_list()
    items = list(zip(keys, rows.get_column("version").to_list(), rows.get_column("value").to_list()))
    return int(views.kv.upsert_many(items, ttl=views.ttls[view]))
