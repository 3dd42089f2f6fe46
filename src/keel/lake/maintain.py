"""When a lake table needs maintenance, and the retention floor every engine's vacuum keeps.

Stream sinks append many small files; each query then opens them all. `Lake.maintain` rewrites them
into few large ones, deletes files no version younger than the retention needs and writes a
checkpoint (for Delta: ``OPTIMIZE``, ``VACUUM``, a checkpoint; see `keel.lake.delta`).
``needs_maintenance`` is the cheap test a scheduler runs on ``Lake.describe`` before deciding to call
``Lake.maintain``.

Vacuum removes what time travel reads: it never goes below 7 days (Delta's own default) unless
forced, so a reader or a `read(as_of=...)` within a week keeps working (``check_retention``).
"""

from __future__ import annotations

from datetime import timedelta

from keel.errors import ConfigError
from keel.lake.base import MIN_RETENTION, TableInfo

SMALL_FILE_BYTES = 32 * 1024 * 1024
EXCESS_FILES = 32


def needs_maintenance(info: TableInfo, *, small_file_bytes: int = SMALL_FILE_BYTES,
                      excess_files: int = EXCESS_FILES) -> bool:
    """True if compaction would merge many small files.

    A table needs it when it has at least `excess_files` more files than partitions (a compacted
    table has about one per partition) and its files average under `small_file_bytes`.
    """
    if info.files == 0:
        return False
    return info.files - max(info.partitions, 1) >= excess_files and info.size_bytes / info.files < small_file_bytes


def check_retention(table: str, retention: timedelta, force: bool) -> None:
    """Refuse a vacuum retention under `MIN_RETENTION` unless `force`: it would break readers and time travel."""
    if retention < MIN_RETENTION and not force:
        raise ConfigError(
            f"vacuum of table {table!r} with a retention of {retention} is below the {MIN_RETENTION.days}-day "
            f"floor: queries running and time travel within that window would fail. Use a longer retention, "
            f"or pass force=True if no one reads older versions")
