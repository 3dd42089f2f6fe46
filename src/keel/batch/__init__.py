"""Batch engines: where jobs' SQL and grouped Python functions run. One interface (`base.BatchEngine`),
DuckDB in-process (`local://`, the default, and `duckdb://`) and Spark (`spark://local[N]`, `spark://HOST:PORT`)."""

from __future__ import annotations

from keel.batch.base import BatchEngine
from keel.batch.translate import check_translatable, to_spark
from keel.lake.base import Lake
from keel.schemes import open_engine

ENGINES = {
    "local": "keel.batch.duckdb:open_duckdb_batch",
    "duckdb": "keel.batch.duckdb:open_duckdb_batch",
    "spark": "keel.batch.spark:open_spark_batch",
}


def open_batch(url: str, lake: Lake, **options: object) -> BatchEngine:
    """Open the batch engine of the profile's `batch` URL over `lake`."""
    engine: BatchEngine = open_engine("batch", url, ENGINES, lake=lake, **options)
    return engine


__all__ = ["BatchEngine", "ENGINES", "check_translatable", "open_batch", "to_spark"]
