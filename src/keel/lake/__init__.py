"""Data lake: one interface (`base.Lake`), Delta Lake on local disk (`file://`) and on S3 (`s3://`)."""

from __future__ import annotations

from keel.schemes import open_engine
from keel.lake.base import Lake, MaintenanceReport, TableInfo, WriterCommit

ENGINES = {
    "file": "keel.lake.delta:open_delta_lake",
    "s3": "keel.lake.delta:open_delta_lake",
}


def open_lake(url: str, **options: object) -> Lake:
    lake: Lake = open_engine("lake", url, ENGINES, **options)
    return lake


__all__ = ["Lake", "MaintenanceReport", "TableInfo", "WriterCommit", "open_lake", "ENGINES"]
