"""Data lake: one interface (`base.Lake`), Delta Lake on local disk (`file://`) and on S3 (`s3://`)."""

from __future__ import annotations

from keel.schemes import open_engine
from keel.lake.base import Lake, MaintenanceReport, TableInfo, WriterCommit

# The one scheme table of the lake: scheme -> the engine that opens it.
ENGINES = {
    "file": "keel.lake.delta:open_local_lake",
    "s3": "keel.lake.delta:open_s3_lake",
}


def open_lake(url: str, **options: object) -> Lake:
    lake: Lake = open_engine("lake", url, ENGINES, **options)
    return lake


__all__ = ["Lake", "MaintenanceReport", "TableInfo", "WriterCommit", "open_lake", "ENGINES"]
