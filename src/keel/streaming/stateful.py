"""Stateful processors (`keel.aggregate`, `keel.stateful`): state and outputs committed as units.

A unit is everything computed up to some offsets: the state (open windows or keyed state), the
watermark, and the outputs of the micro-batches since the previous unit (closed windows, late
events, view rows). Committing a unit:

1. write it durably into its own folder (`checkpoint.save_unit`);
2. append its outputs to each lake table, writer = the processor, version = the sum of the next
   offsets, the unit's folder in the commit metadata (late events go to ``<processor>_late``);
3. upsert its view rows; 4. point ``checkpoint.json`` at it (older units are dropped).

On start, the newest unit named by ``checkpoint.json`` or by any table's last commit is loaded,
its outputs are delivered again (no-ops where they landed: same versions) and reading resumes at
its offsets. A crash anywhere in 1-4 thus neither loses nor duplicates an output.

Units are cut adaptively (backpressure of the commit cost): when the poll finds nothing new, when
`commit_records` records are pending, or when the time since the last commit exceeds both
`min_commit_seconds` and four times the last commit's cost (commits take at most ~20% of the time).

These processors read every partition of their stream in one process (their state is global):
one instance each, enforced by a claim on the state directory (`checkpoint.claim`: a second
process gets ConflictError at start); scale-out is for stateless processors
(`keel.streaming.stateless`).
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import polars as pl
import pyarrow as pa

from keel.bus import Consumer
from keel.engines import Engines
from keel.monitor.streams import processor_metrics
from keel.project.declare import Aggregation, Processor, Table, View
from keel.project.schema import table_schema
from keel.streaming.base import Tally, commit_group
from keel.streaming.checkpoint import (
    Unit,
    claim,
    load_unit,
    point_to_unit,
    release,
    save_unit,
    unit_pointer,
)
from keel.streaming.deadletters import DeadLetters
from keel.streaming.decode import decode_records, time_bounds
from keel.streaming.function import UserFunction
from keel.streaming.sessions import SessionState
from keel.streaming.sinks import (
    empty_view_rows,
    keyed_view_rows,
    newest_per_key,
    top_view_rows,
    window_view_rows,
    write_view_rows,
)
from keel.streaming.state import KeyedState
from keel.streaming.windows import WindowState

log = logging.getLogger("keel.stream")


def late_table(decl: Aggregation | Processor) -> str:
    """The lake table receiving an aggregation's late events (its side output)."""
    return f"{decl.name}_late"


class WindowOperator:
    def __init__(self, decl: Aggregation) -> None:
        self.decl = decl
        self.windows: WindowState | SessionState = (SessionState(decl) if decl.window.type == "session"
                                                    else WindowState(decl))
        self._running: list[pl.DataFrame] = []  # per batch since the last unit: windows it touched

    def _empty_output(self) -> pl.DataFrame:
        return self.windows.update(_empty_events(self.decl)).closed

    def update(self, events: pl.DataFrame, partitions: np.ndarray | None = None, active: set[int] | None = None,
               raw: pa.RecordBatch | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
        out = self.windows.update(events, partitions, active)
        self._running.append(out.running)
        return out.closed, out.late

    def pending_views(self, closed: pl.DataFrame) -> pl.DataFrame:
        """The view rows of the batches since the last unit, whose closed windows are `closed` (the
        unit's rows): the newest window per key (built once per unit, not per batch: only the newest
        row of a key could win its upsert anyway)."""
        running = pl.concat(self._running, how="vertical_relaxed") if self._running else pl.DataFrame()
        self._running = []
        views = window_view_rows(self.decl.by, running, closed)
        if self.decl.top:
            # ranked over every key of the latest open window, not only the keys the batches touched
            current = (self.windows.final(self.windows.state) if isinstance(self.windows, WindowState)
                       and self.windows.state is not None else running)
            views = pl.concat([views, top_view_rows(self.decl.by, next(iter(self.decl.measures)), self.decl.top,
                                                    current)])
        return views

    def watermark(self) -> int | None:
        return self.windows.watermark_us

    def unrepresentable(self, events: pl.DataFrame) -> list[tuple[int, str]]:
        """(index, reason) of the events whose windows would end beyond the year 9999 (or start
        before the year 1): their rows could not be written or read, so they are dead-lettered."""
        return self.windows.unrepresentable(events)

    def frames(self) -> dict[str, pl.DataFrame]:
        marks = pl.DataFrame({"partition": list(self.windows.marks), "high_us": list(self.windows.marks.values())},
                             schema={"partition": pl.Int64, "high_us": pl.Int64})
        return {"state": self.windows.state if self.windows.state is not None else pl.DataFrame(), "marks": marks}

    def restore(self, unit: Unit) -> None:
        state = unit.frames.get("state")
        self.windows.state = state if state is not None and state.width else None
        self.windows.watermark_us = unit.watermark_us
        marks = unit.frames.get("marks")
        if marks is not None and marks.height:
            self.windows.marks = dict(zip(marks.get_column("partition").to_list(), marks.get_column("high_us").to_list()))


class KeyedOperator:
    def __init__(self, decl: Processor, transform: UserFunction) -> None:
        assert decl.state_key is not None
        self.decl, self.transform = decl, transform
        self.state = KeyedState(decl.state_key)
        self._views: list[pl.DataFrame] = []

    def update(self, events: pl.DataFrame, partitions: np.ndarray | None = None, active: set[int] | None = None,
               raw: pa.RecordBatch | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
        out = self.transform(events, raw, state=self.state)
        key = self.decl.state_key or ""
        if key in out.columns:
            self._views.append(keyed_view_rows(key, out))
        return out, events.clear()

    def pending_views(self, rows: pl.DataFrame) -> pl.DataFrame:
        """The newest view row per key of the batches since the last unit (each batch's rows were
        keyed as they came, `rows` is not needed again)."""
        views = pl.concat(self._views) if self._views else empty_view_rows()
        self._views = []
        return newest_per_key(views)

    def watermark(self) -> int | None:
        return None

    def unrepresentable(self, events: pl.DataFrame) -> list[tuple[int, str]]:
        return []

    def frames(self) -> dict[str, pl.DataFrame]:
        return {"state": self.state.frame if self.state.frame is not None else pl.DataFrame()}

    def restore(self, unit: Unit) -> None:
        self.state = KeyedState(self.state.key, unit.frames.get("state"))


def _empty_events(decl: Aggregation | Processor) -> pl.DataFrame:
    return pl.from_arrow(table_schema(decl.stream.schema).empty_table())  # type: ignore[return-value]


class StatefulEngine:
    """A `keel.streaming.base.ProcessorEngine` for a processor with state (windows or keyed
    state): it reads every partition, as the only instance of the processor."""

    reads_every_partition = True

    def __init__(self, decl: Aggregation | Processor, engines: Engines, dead_letters: DeadLetters, tally: Tally,
                 min_commit_seconds: float = 0.05, commit_records: int = 500_000,
                 idle_seconds: float = 10.0) -> None:
        self.decl = decl
        self.lake, self.kv_views, self.state_dir = engines.lake, engines.views, engines.state_dir
        self.dead_letters, self.tally = dead_letters, tally
        self._late_metric = processor_metrics(decl.name)["late"]
        self.op: WindowOperator | KeyedOperator = (
            WindowOperator(decl) if isinstance(decl, Aggregation)
            else KeyedOperator(decl, UserFunction(decl, engines.views, dead_letters)))
        self.tables = [t for t in self.decl.into if isinstance(t, Table)]
        self.views = [v for v in self.decl.into if isinstance(v, View)]
        self.min_commit_seconds, self.commit_records = min_commit_seconds, commit_records
        self.offsets: dict[int, int] = {}
        self._reset_pending()
        self.last_commit = time.monotonic()
        self.last_commit_cost = 0.0
        self.idle_seconds = idle_seconds
        self.started = time.monotonic()
        self.last_seen: dict[int, float] = {}
        self.watermark_us: int | None = None
        self._consumer: Consumer | None = None

    def _reset_pending(self) -> None:
        self.rows: list[pl.DataFrame] = []
        self.late: list[pl.DataFrame] = []
        self.pending = 0

    @property
    def writer(self) -> str:
        return self.decl.name

    @property
    def consumer(self) -> Consumer:
        assert self._consumer is not None, "call recover() first"
        return self._consumer

    # -- recovery ------------------------------------------------------------------------------

    def recover(self, consumer: Consumer) -> None:
        self._consumer = consumer
        claim(self.state_dir, self.decl.name)
        if isinstance(self.op, WindowOperator):
            schema = self.op._empty_output().to_arrow().schema
            for t in self.tables:
                self.lake.create_table(t.name, schema, list(t.partition_by) or None)
        candidates: list[tuple[int, str]] = []
        pointer = unit_pointer(self.state_dir, self.decl.name)
        if pointer is not None:
            candidates.append((pointer[1], pointer[0]))
        existing = set(self.lake.list_tables())
        for name in [t.name for t in self.tables] + [late_table(self.decl)]:
            commit = self.lake.writer_commit(name, self.writer) if name in existing else None
            if commit is not None and "unit" in commit.metadata:
                candidates.append((commit.version, commit.metadata["unit"]))
        if candidates:
            _, unit_dir = max(candidates)
            unit = load_unit(self.state_dir, self.decl.name, unit_dir)
            self.op.restore(unit)
            self.offsets = dict(unit.offsets)
            self._deliver(unit, unit_dir)
            point_to_unit(self.state_dir, self.decl.name, unit_dir, unit.version)
        # no unit yet: from the start of the stream (the group's committed offsets are only for status)
        for p in consumer.assignment:
            consumer.seek(p, self.offsets.get(p, 0))

    # -- processing ----------------------------------------------------------------------------

    def process(self, batch: pa.RecordBatch) -> int:
        parts = batch.column("partition").to_numpy()
        offs = batch.column("offset").to_numpy()
        decoded = decode_records(batch, self.decl.stream.schema, time_bounds(self.decl.stream),
                                 now_us=time.time_ns() // 1000)
        self.dead_letters.send(batch, decoded.bad, stage="decode")
        events, good = decoded.events, decoded.rows
        overflow = self.op.unrepresentable(events)
        if overflow:
            self.dead_letters.send(batch, [(int(good[i]), why) for i, why in overflow], stage="window")
            keep = np.ones(len(good), dtype=bool)
            keep[[i for i, _ in overflow]] = False
            events, good = events.filter(pl.Series(keep)), good[keep]
        now = time.monotonic()
        for p in set(parts.tolist()):
            self.last_seen[p] = now
        raw = None  # the records of `events`, for a keyed function's dead letters (windows never fail alone)
        if isinstance(self.op, KeyedOperator):
            raw = batch if len(good) == batch.num_rows else batch.take(good)
        rows, late = self.op.update(events, parts[good], self._active(now), raw=raw)
        for p in set(parts.tolist()):
            self.offsets[p] = max(self.offsets.get(p, 0), int(offs[parts == p].max()) + 1)
        if rows.height:
            self.rows.append(rows)
        if late.height:
            self.late.append(late)
            self._count_late(late.height)
        self.pending += batch.num_rows
        if self.due():
            self.commit()
        return int(batch.num_rows)

    def _active(self, now: float) -> set[int]:
        """Partitions that count for the watermark: assigned and not idle for `idle_seconds`."""
        return {p for p in self.consumer.assignment
                if now - self.last_seen.get(p, self.started) < self.idle_seconds}

    def due(self) -> bool:
        if self.pending >= self.commit_records:
            return True
        since = time.monotonic() - self.last_commit
        return since >= max(self.min_commit_seconds, 4 * self.last_commit_cost)

    def _count_late(self, n: int) -> None:
        self.tally.late += n
        self._late_metric.inc(n)
        log.info("%s: %d late event(s) routed to %s_late", self.decl.name, n, self.decl.name)

    def close(self) -> None:
        """Give up this process's claim on the processor (see `checkpoint.claim`)."""
        release(self.state_dir, self.decl.name)

    def flush(self) -> None:
        """Commit what is pending (an idle poll, a stop)."""
        if self.pending:
            self.commit()

    def idle(self) -> None:
        """An empty poll commits what is pending: the bus has nothing newer to batch it with."""
        self.flush()

    def commit(self) -> None:
        t0 = time.monotonic()
        version = sum(self.offsets.values())
        frames = dict(self.op.frames())
        frames["rows"] = pl.concat(self.rows, how="vertical_relaxed") if self.rows else pl.DataFrame()
        frames["late"] = pl.concat(self.late, how="vertical_relaxed") if self.late else pl.DataFrame()
        frames["views"] = self.op.pending_views(frames["rows"])
        unit = Unit(version, dict(self.offsets), self.op.watermark(), frames)
        unit_dir = save_unit(self.state_dir, self.decl.name, unit)
        self._deliver(unit, unit_dir)
        point_to_unit(self.state_dir, self.decl.name, unit_dir, version)
        commit_group(self.consumer, self.decl.name, dict(self.offsets))
        self._reset_pending()
        self.last_commit = time.monotonic()
        self.last_commit_cost = self.last_commit - t0

    def _deliver(self, unit: Unit, unit_dir: str) -> None:
        """Outputs of a unit to the lake (exactly once by version) and the views (versioned upserts)."""
        lake = self.lake
        meta = {"offsets": json.dumps({str(p): o for p, o in unit.offsets.items()}), "unit": unit_dir}
        rows, late = unit.frames.get("rows"), unit.frames.get("late")
        if rows is not None and rows.height:
            data = rows.to_arrow()
            for t in self.tables:
                lake.create_table(t.name, data.schema, list(t.partition_by) or None)
                lake.append(t.name, data, writer=self.writer, version=unit.version, metadata=meta)
        if late is not None and late.height:
            data = late.to_arrow()
            lake.create_table(late_table(self.decl), data.schema, None)
            lake.append(late_table(self.decl), data, writer=self.writer, version=unit.version, metadata=meta)
        views = unit.frames.get("views")
        if views is not None and views.height:
            for v in self.views:
                write_view_rows(self.kv_views, v.name, views)
        if unit.watermark_us is not None:
            self.watermark_us = unit.watermark_us

