"""Running one processor: poll a micro-batch, process it columnar, commit to its sinks.

Exactly once into the lake: every lake append of a processor carries the writer id
`<processor>` and, as its version, the sum of the next offsets of all partitions after the batch
(it grows with every non-empty batch); the per-partition offsets go into the commit metadata. On
start the runner seeks each partition to the offsets of its last lake commit, so a batch that was
committed is never appended again, and one that was not is read again.

Views are written with versioned upserts (see `keel.kv.views`), so replays never regress them.
A batch whose user function raises is retried record by record; the records that still raise go
to the stream's dead-letter stream with the error, and the rest go on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import polars as pl
import pyarrow as pa

from keel.bus import dlq_name
from keel.declare import Aggregation, Processor, Table, View
from keel.errors import KeelError
from keel.streaming.checkpoint import load_checkpoint, save_checkpoint
from keel.streaming.decode import to_events
from keel.streaming.windows import WEND, WindowState

log = logging.getLogger("keel.stream")
FINAL_VERSION_BONUS = 999  # a closed window's view value outranks every running value of it


@dataclass
class Stats:
    events: int = 0
    batches: int = 0
    dead_lettered: int = 0
    late: int = 0
    last_batch_seconds: float = 0.0
    offsets: dict[int, int] = field(default_factory=dict)
    error: str | None = None


class Runner:
    """One processor or aggregation bound to a Runtime's engines."""

    def __init__(self, decl: Processor | Aggregation, runtime: Any, max_records: int = 50_000) -> None:
        self.decl = decl
        self.rt = runtime
        self.max_records = max_records
        self.stats = Stats()
        self.windows = WindowState(decl) if isinstance(decl, Aggregation) else None
        self.closed_through_us = -1  # windows ending at or before this were emitted to the lake
        self.consumer: Any = None
        self._created: set[str] = set()

    @property
    def writer(self) -> str:
        return self.decl.name

    def _tables(self) -> list[Table]:
        return [t for t in self.decl.into if isinstance(t, Table)]

    def _views(self) -> list[View]:
        return [v for v in self.decl.into if isinstance(v, View)]

    def start(self) -> None:
        """Join the consumer group and seek to the last committed position."""
        self.consumer = self.rt.bus.consumer(self.decl.stream.name, group=self.decl.name)
        offsets: dict[int, int] = {}
        for t in self._tables():
            commit = self.rt.lake.writer_commit(t.name, self.writer) if t.name in self.rt.lake.list_tables() else None
            if commit is not None:
                meta = json.loads(commit.metadata.get("offsets", "{}"))
                for p, o in meta.items():
                    offsets[int(p)] = min(offsets.get(int(p), o), o)
                self.closed_through_us = max(self.closed_through_us, int(commit.metadata.get("closed_through_us", -1)))
        if self.windows is not None:
            cp = load_checkpoint(self.rt.state_dir, self.decl.name)
            if cp is not None:
                self.windows.state, self.windows.watermark_us = cp.state, cp.watermark_us
                offsets = cp.offsets  # the state is consistent with these offsets, not the lake's
        for p, o in offsets.items():
            if p in self.consumer.assignment:
                self.consumer.seek(p, o)
        self.stats.offsets = dict(offsets)

    def step(self, timeout: float = 0.2) -> int:
        """Process at most one micro-batch; return how many records it held."""
        assert self.consumer is not None, "call start() first"
        batch = self.consumer.poll(self.max_records, timeout)
        if batch.num_rows == 0:
            return 0
        t0 = time.perf_counter()
        next_offsets = dict(self.stats.offsets)
        parts = batch.column("partition").to_numpy()
        offs = batch.column("offset").to_numpy()
        for p in set(parts.tolist()):
            next_offsets[p] = int(offs[parts == p].max()) + 1
        version = sum(next_offsets.values())
        events = to_events(batch, self.decl.stream.schema)
        if self.windows is not None:
            self._aggregate(events, next_offsets, version)
        else:
            out = self._transform(events, batch)
            self._sink(out, next_offsets, version, {})
        self.consumer.commit(next_offsets)
        self.stats.offsets = next_offsets
        self.stats.events += batch.num_rows
        self.stats.batches += 1
        self.stats.last_batch_seconds = time.perf_counter() - t0
        return batch.num_rows

    def _transform(self, events: pl.DataFrame, batch: pa.RecordBatch) -> pl.DataFrame:
        fn = self.decl.transform if isinstance(self.decl, Processor) else None
        if fn is None:
            return events
        try:
            return pl.DataFrame(fn(events))
        except Exception:  # find the records that fail, dead-letter them, keep the rest
            good, bad = [], []
            for i in range(events.height):
                try:
                    good.append(pl.DataFrame(fn(events.slice(i, 1))))
                except Exception as exc:  # noqa: BLE001 - any user error goes to the DLQ
                    bad.append((i, f"{type(exc).__name__}: {exc}"))
            self._dead_letter(batch, bad)
            return pl.concat(good, how="vertical_relaxed") if good else events.clear()

    def _dead_letter(self, batch: pa.RecordBatch, bad: list[tuple[int, str]]) -> None:
        if not bad:
            return
        rows = batch.take(pa.array([i for i, _ in bad]))
        headers = [[("error", err.encode()), ("processor", self.decl.name.encode()),
                    ("source_offset", f"{p}:{o}".encode())]
                   for (_, err), p, o in zip(bad, rows.column("partition").to_pylist(), rows.column("offset").to_pylist())]
        dlq = pa.record_batch({"key": rows.column("key"), "value": rows.column("value"),
                               "timestamp": rows.column("timestamp"),
                               "headers": pa.array(headers, pa.map_(pa.string(), pa.binary()))})
        self.rt.bus.produce(dlq_name(self.decl.stream.name), dlq)
        self.stats.dead_lettered += len(bad)
        log.warning("%s: %d record(s) sent to %s", self.decl.name, len(bad), dlq_name(self.decl.stream.name))

    def _aggregate(self, events: pl.DataFrame, next_offsets: dict[int, int], version: int) -> None:
        assert self.windows is not None and isinstance(self.decl, Aggregation)
        emitted = self.windows.update(events)
        closed = emitted.closed.filter(pl.col(WEND).dt.epoch("us") > self.closed_through_us)
        if closed.height:
            self.closed_through_us = int(closed.select(pl.col(WEND).dt.epoch("us").max()).item())
        meta = {"closed_through_us": str(self.closed_through_us)}
        self._sink(closed, next_offsets, version, meta, views_from=(emitted.running, closed))
        if emitted.late.height:
            self.stats.late += emitted.late.height
            log.warning("%s: %d late event(s) counted and kept out of closed windows", self.decl.name,
                        emitted.late.height)
        save_checkpoint(self.rt.state_dir, self.decl.name, self.windows.state, self.windows.watermark_us, next_offsets)

    def _sink(self, rows: pl.DataFrame, next_offsets: dict[int, int], version: int, meta: dict[str, str],
              views_from: tuple[pl.DataFrame, pl.DataFrame] | None = None) -> None:
        metadata = {"offsets": json.dumps({str(p): o for p, o in next_offsets.items()}), **meta}
        data = rows.to_arrow()
        for t in self._tables():
            if t.name not in self._created:
                self.rt.lake.create_table(t.name, data.schema, list(t.partition_by) or None)
                self._created.add(t.name)
            if rows.height:
                self.rt.lake.append(t.name, data, writer=self.writer, version=version, metadata=metadata)
        for v in self._views():
            if views_from is not None:
                self._window_views(v, *views_from)
            else:
                self._keyed_view(v, rows)

    def _keyed_view(self, view: View, rows: pl.DataFrame) -> None:
        key = getattr(self.decl, "key", None) or self.decl.stream.key
        if key is None or rows.height == 0:
            return
        version = int(time.time() * 1000)
        items = [(str(r.pop(key)), version, r) for r in rows.to_dicts()]
        self.rt.views.upsert(view.name, items)

    def _window_views(self, view: View, running: pl.DataFrame, closed: pl.DataFrame) -> None:
        assert isinstance(self.decl, Aggregation)
        by = self.decl.by
        items = []
        for frame, bonus in ((running, 0), (closed, FINAL_VERSION_BONUS)):
            for r in frame.to_dicts():
                ws, we = r.pop("window_start"), r.pop("window_end")
                version = int(we.timestamp() * 1000) * 1000 + bonus
                items.append((str(r[by]), version, {**r, "window_start": ws.isoformat(), "window_end": we.isoformat()}))
        self.rt.views.upsert(view.name, items)
        if self.decl.top and running.height:
            self._top(view, running)

    def _top(self, view: View, running: pl.DataFrame) -> None:
        assert isinstance(self.decl, Aggregation) and self.decl.top
        rank_by = next(iter(self.decl.measures))
        latest = running.filter(pl.col("window_start") == pl.col("window_start").max())
        best = latest.sort([rank_by, self.decl.by], descending=[True, False]).head(self.decl.top)
        ws, we = best.get_column("window_start")[0], best.get_column("window_end")[0]
        value = {"window_start": ws.isoformat(), "window_end": we.isoformat(),
                 "items": msgspec.to_builtins(best.select(self.decl.by, rank_by).to_dicts())}
        self.rt.views.upsert(view.name, [("_top", int(we.timestamp() * 1000) * 1000, value)])

    def run(self, stop: threading.Event) -> None:
        """Process until `stop` is set; the batch in flight is finished and committed first."""
        try:
            self.start()
            while not stop.is_set():
                self.step(timeout=0.2)
        except KeelError as exc:
            self.stats.error = str(exc)
            log.error("processor %s stopped: %s", self.decl.name, exc)
            raise
        finally:
            if self.consumer is not None:
                self.consumer.close()
