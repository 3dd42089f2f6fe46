"""Lake table maintenance as code: compaction, vacuum, checkpoints; and when to run them.

Stream sinks append many small files; each query then opens them all. ``maintain`` rewrites them
into few large ones (Delta ``OPTIMIZE``: readers and concurrent appends are unaffected), deletes
files no version younger than the retention needs (``VACUUM``) and writes a checkpoint so that
opening the table reads one Parquet file instead of many commit files. ``needs_maintenance`` is
the cheap test a scheduler runs on ``Lake.describe`` before deciding to call ``maintain``.

Vacuum removes what time travel reads: it never goes below 7 days (Delta's own default) unless
forced, so a reader or a `read(as_of=...)` within a week keeps working.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from keel.errors import BackendError, ConfigError, ConflictError, KeelError
from keel.lake.base import Lake, TableInfo

MIN_RETENTION = timedelta(days=7)
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


def compact(lake: Lake, table: str, *, target_file_bytes: int | None = None) -> dict[str, Any]:
    """Rewrite small files into large ones (Delta OPTIMIZE compact); returns deltalake's metrics."""
    with _errors("compact", table):
        dt = _delta_table(lake, table)
        metrics: dict[str, Any] = dt.optimize.compact(target_size=target_file_bytes)
    return metrics


def vacuum(lake: Lake, table: str, *, retention: timedelta = MIN_RETENTION, force: bool = False,
           dry_run: bool = False) -> list[str]:
    """Delete files that no version younger than `retention` references; returns their paths.

    Refuses a retention under 7 days unless `force`: it would break readers and time travel.
    """
    if retention < MIN_RETENTION and not force:
        raise ConfigError(
            f"vacuum of table {table!r} with a retention of {retention} is below the {MIN_RETENTION.days}-day "
            f"floor: queries running and time travel within that window would fail. Use a longer retention, "
            f"or pass force=True if no one reads older versions")
    with _errors("vacuum", table):
        dt = _delta_table(lake, table)
        removed: list[str] = dt.vacuum(retention_hours=max(int(retention.total_seconds() // 3600), 0),
                                       dry_run=dry_run, enforce_retention_duration=not force)
    return removed


def checkpoint(lake: Lake, table: str) -> int:
    """Write a checkpoint of the latest version; returns that version."""
    with _errors("checkpoint", table):
        dt = _delta_table(lake, table)
        dt.create_checkpoint()
        return int(dt.version())


def maintain(lake: Lake, table: str, *, compaction: bool = True, vacuuming: bool = True,
             checkpointing: bool = True, retention: timedelta = MIN_RETENTION, force: bool = False,
             target_file_bytes: int | None = None) -> dict[str, Any]:
    """Compact, vacuum and checkpoint `table`; return a report a scheduler can log or show.

    Report keys: table, files_before, files_after, rows, version_before, version_after,
    files_compacted, files_written, files_vacuumed, checkpoint_version, seconds.
    """
    started = time.perf_counter()
    if retention < MIN_RETENTION and not force:
        vacuum(lake, table, retention=retention, force=False, dry_run=True)  # raises the explanation
    before = lake.describe(table)
    report: dict[str, Any] = {"table": table, "files_before": before.files, "rows": before.rows,
                              "version_before": before.version, "files_compacted": 0, "files_written": 0,
                              "files_vacuumed": 0, "checkpoint_version": None}
    if compaction:
        metrics = compact(lake, table, target_file_bytes=target_file_bytes)
        report["files_compacted"] = int(metrics.get("numFilesRemoved", 0))
        report["files_written"] = int(metrics.get("numFilesAdded", 0))
    if vacuuming:
        report["files_vacuumed"] = len(vacuum(lake, table, retention=retention, force=force))
    if checkpointing:
        report["checkpoint_version"] = checkpoint(lake, table)
    after = lake.describe(table)
    report.update(files_after=after.files, version_after=after.version,
                  seconds=round(time.perf_counter() - started, 3))
    return report


def _delta_table(lake: Lake, table: str) -> Any:
    opener = getattr(lake, "delta_table", None)
    if opener is None:
        raise ConfigError(f"maintenance needs a Delta lake; {type(lake).__name__} has no Delta tables")
    return opener(table)


@contextmanager
def _errors(action: str, table: str) -> Iterator[None]:
    from deltalake.exceptions import CommitFailedError, DeltaError

    try:
        yield
    except KeelError:
        raise
    except CommitFailedError as exc:
        raise ConflictError(f"{action} of table {table!r} lost a commit race ({str(exc).splitlines()[0]}); "
                            f"run it again") from exc
    except (DeltaError, OSError) as exc:
        raise BackendError(f"{action} of table {table!r} failed: {str(exc).splitlines()[0]}") from exc
