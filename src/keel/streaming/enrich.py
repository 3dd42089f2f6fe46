"""Stream-view enrichment: add columns looked up in an online view, one `get_many` per batch.

    @keel.processor(purchases, into=table, enrich=[keel.lookup(item_info, on="item_id", prefix="item_")])
    def priced(batch): ...      # batch now has item_<field> columns from the view's JSON values

Each distinct key of the batch is read once; a missing key gives nulls. Values are JSON objects
(as views store them); their fields become columns with the types Polars infers.
"""

from __future__ import annotations

import io

import polars as pl

from keel.kv.views import Views
from keel.project.declare import Lookup


def enrich(batch: pl.DataFrame, views: Views, lookup: Lookup) -> pl.DataFrame:
    """`batch` with the view's fields for the key in column `lookup.on` (see the module docstring)."""
    if batch.height == 0 or lookup.on not in batch.columns:
        return batch
    keys = batch.get_column(lookup.on).cast(pl.String).unique(maintain_order=True)
    raw = views.get_raw(lookup.view, keys.to_list())
    hits = [(k, v) for k, v in zip(keys.to_list(), raw) if v is not None]
    if not hits:
        return batch.with_columns([pl.lit(None).alias(lookup.prefix + f) for f in lookup.fields])
    decoded = pl.read_ndjson(io.BytesIO(b"\n".join(b'{"v":' + v + b"}" for _, v in hits)))
    values = decoded.get_column("v")
    if values.dtype == pl.Struct:
        fields = list(lookup.fields) or [f.name for f in values.dtype.fields]  # type: ignore[attr-defined]
        cols = values.struct.unnest().select([pl.col(f).alias(lookup.prefix + f) for f in fields])
    else:  # a view of plain values: one column named after the view
        cols = values.alias(lookup.prefix + lookup.view).to_frame()
    cols = cols.with_columns(pl.Series("__key", [k for k, _ in hits]))
    joined = batch.with_columns(pl.col(lookup.on).cast(pl.String).alias("__key"))
    return joined.join(cols, on="__key", how="left", maintain_order="left").drop("__key")
