"""Running one processor: poll a micro-batch, process it columnar, commit to its sinks.

The loop is here; what a batch does and how it commits exactly once depends on the processor:

* stateless (`keel.land`, `keel.processor`): `keel.streaming.stateless` — per-partition lake
  writers with fencing, so several processes may share the stream's partitions;
* stateful (`keel.aggregate`, `keel.stateful`): `keel.streaming.stateful` — state, offsets and
  outputs committed as one durable unit; one process reads all partitions.

Backpressure: a poll takes at most `max_records` records, so a batch's memory and time are
bounded; a stateful processor cuts its commits adaptively (see `stateful`). A processor that
falls behind simply lags on the bus (`keel status`, the `keel_stream_consumer_lag` metric),
which is durable: nothing upstream is dropped or blocked.

A batch whose user function raises is retried record by record; the records that still raise go
to the stream's dead-letter stream with the error, and the rest go on. `run` stops at `stop`
after committing the batch in flight and whatever a stateful processor has pending.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa

from keel.bus import dlq_name
from keel.bus.ops import CONTEXT_HEADERS as _CONTEXT
from keel.project.declare import Aggregation, Processor
from keel.errors import BackendError, ConflictError, KeelError, SchemaError
from keel.monitor.streams import processor_metrics
from keel.streaming.enrich import enrich
from keel.streaming.stateful import StatefulEngine
from keel.streaming.stateless import StatelessEngine

log = logging.getLogger("keel.stream")


@dataclass
class Stats:
    events: int = 0
    batches: int = 0
    dead_lettered: int = 0
    late: int = 0
    last_batch_seconds: float = 0.0
    offsets: dict[int, int] = field(default_factory=dict)
    error: str | None = None


def is_stateful(decl: Processor | Aggregation) -> bool:
    return isinstance(decl, Aggregation) or getattr(decl, "state_key", None) is not None


class Runner:
    """One processor or aggregation bound to a Runtime's engines (bus, lake, views, state_dir)."""

    def __init__(self, decl: Processor | Aggregation, runtime: Any, max_records: int = 50_000,
                 min_commit_seconds: float = 0.05) -> None:
        self.decl = decl
        self.rt = runtime
        self.max_records = max_records
        self.stats = Stats()
        self.consumer: Any = None
        self.watermark_us: int | None = None
        self.metrics = processor_metrics(decl.name)
        self.engine: StatefulEngine | StatelessEngine = (
            StatefulEngine(self, min_commit_seconds=min_commit_seconds) if is_stateful(decl)
            else StatelessEngine(self))
        self._rate_mark = (time.monotonic(), 0)
        self._lag_at = 0.0

    @property
    def writer(self) -> str:
        return self.decl.name

    def start(self) -> None:
        """Join the consumer group (a stateful processor takes every partition) and recover."""
        stream = self.decl.stream
        if is_stateful(self.decl):
            count = len(self.rt.bus.describe(stream.name).partitions)
            self.consumer = self.rt.bus.consumer(stream.name, group=self.decl.name, partitions=list(range(count)))
        else:
            self.consumer = self.rt.bus.consumer(stream.name, group=self.decl.name)
        self.engine.recover()

    def step(self, timeout: float = 0.2) -> int:
        """Process at most one micro-batch; return how many records it held."""
        assert self.consumer is not None, "call start() first"
        batch = self.consumer.poll(self.max_records, timeout)
        if batch.num_rows == 0:
            if isinstance(self.engine, StatefulEngine):
                self.engine.flush()
            else:
                self.engine.sync()
            self._observe_lag(force=False)
            return 0
        t0 = time.perf_counter()
        self.engine.process(batch)
        elapsed = time.perf_counter() - t0
        self.stats.events += batch.num_rows
        self.stats.batches += 1
        self.stats.last_batch_seconds = elapsed
        self.stats.offsets = self._positions(batch)
        self.metrics["events"].inc(batch.num_rows)
        self.metrics["batches"].inc()
        self.metrics["batch_seconds"].observe(elapsed)
        self._observe_rate()
        self._observe_lag(force=False)
        return int(batch.num_rows)

    def _positions(self, batch: pa.RecordBatch) -> dict[int, int]:
        out = dict(self.stats.offsets)
        parts = batch.column("partition").to_numpy()
        offs = batch.column("offset").to_numpy()
        for p in set(parts.tolist()):
            out[p] = int(offs[parts == p].max()) + 1
        return out

    def _observe_rate(self) -> None:
        now = time.monotonic()
        since, events = self._rate_mark
        if now - since >= 2.0:
            self.metrics["events_per_s"].set((self.stats.events - events) / (now - since))
            self._rate_mark = (now, self.stats.events)
        if self.watermark_us is not None:
            self.metrics["watermark_delay"].set(time.time() - self.watermark_us / 1e6)

    def _observe_lag(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._lag_at < 5.0:
            return
        self._lag_at = now
        try:
            info = self.rt.bus.describe(self.decl.stream.name)
        except KeelError:
            return
        mine = set(self.consumer.assignment) if self.consumer is not None else set()
        lag = sum(max(0, p.end_offset - self.stats.offsets.get(p.partition, p.start_offset))
                  for p in info.partitions if p.partition in mine)
        self.metrics["lag"].set(lag)

    def commit_group(self, offsets: dict[int, int]) -> None:
        """Commit the group's offsets (they serve lag and a fresh start; exactness comes from the lake
        commits). A commit refused because partitions moved in a rebalance is not an error here: the
        new owner resumes from the lake, so this member just goes on with what it still owns. A commit
        that cannot be written (a full disk, a broker away) is not worth a restart either: the next
        batch commits again, and only `keel status` lags meanwhile."""
        try:
            self.consumer.commit(offsets)
        except ConflictError as exc:
            log.info("%s: %s", self.decl.name, exc)
        except BackendError as exc:
            log.warning("%s: offsets not committed for keel status (the lake holds the position): %s",
                        self.decl.name, exc)

    def count_late(self, n: int) -> None:
        self.stats.late += n
        self.metrics["late"].inc(n)
        log.info("%s: %d late event(s) routed to %s_late", self.decl.name, n, self.decl.name)

    # -- the user's function -------------------------------------------------------------------

    def transform(self, events: pl.DataFrame, raw: pa.RecordBatch | None = None,
                  state: Any = None) -> pl.DataFrame:
        """The processor's function over a batch (lookups first); failing records go to the DLQ."""
        decl = self.decl
        fn = decl.transform if isinstance(decl, Processor) else None
        if isinstance(decl, Processor):
            for lookup in decl.lookups:
                events = enrich(events, self.rt.views, lookup)
        if fn is None:
            return events

        def call(frame: pl.DataFrame) -> pl.DataFrame:
            return pl.DataFrame(fn(frame) if state is None else fn(frame, state))

        # keyed state is a frame that put/delete replace (never change in place): a call that fails
        # is undone by putting back the frame from before it
        saved = state.frame if state is not None else None
        try:
            return call(events)
        except Exception:  # find the records that fail, dead-letter them, keep the rest
            if raw is None:
                raise
            if state is not None:
                state.frame = saved
            good, bad = [], []
            for i in range(events.height):
                try:
                    good.append(call(events.slice(i, 1)))
                    saved = state.frame if state is not None else None
                except Exception as exc:  # noqa: BLE001 - any user error goes to the DLQ
                    if state is not None:
                        state.frame = saved
                    bad.append((i, f"{type(exc).__name__}: {exc}"))
            self.dead_letter(raw, bad)
            return pl.concat(good, how="vertical_relaxed") if good else call(events.clear())

    def dead_letter(self, batch: pa.RecordBatch, bad: list[tuple[int, str]], stage: str = "transform") -> None:
        """Produce the records `bad` names (index in `batch`, reason) to the stream's dead-letter
        stream: key, value and timestamp unchanged, the record's own headers kept, and the context
        (reason, stage, processor, source partition and offset) added as headers."""
        if not bad:
            return
        rows = batch.take(pa.array([i for i, _ in bad]))
        headers = [[(k, v) for k, v in (own or []) if k not in _CONTEXT]
                   + [("error", err.encode()), ("stage", stage.encode()), ("processor", self.decl.name.encode()),
                      ("source_partition", str(p).encode()), ("source_offset", str(o).encode())]
                   for (_, err), own, p, o in zip(bad, rows.column("headers").to_pylist(),
                                                  rows.column("partition").to_pylist(), rows.column("offset").to_pylist())]
        values = rows.column("value")
        if values.null_count:  # a Kafka tombstone: stored as an empty value, marked
            headers = [h + [("null_value", b"1")] if v is None else h for h, v in zip(headers, values.to_pylist())]
            values = values.fill_null(b"")
        dlq = pa.record_batch({"key": rows.column("key"), "value": values,
                               "timestamp": rows.column("timestamp"),
                               "headers": pa.array(headers, pa.map_(pa.string(), pa.binary()))})
        try:
            self.rt.bus.produce(dlq_name(self.decl.stream.name), dlq)
        except SchemaError:  # a timestamp the dead-letter stream refuses (Kafka: beyond now + 1 h): now, kept aside
            stamps = rows.column("timestamp").cast(pa.int64()).to_pylist()
            headers = [h + [("source_timestamp", str(ms).encode())] for h, ms in zip(headers, stamps)]
            self.rt.bus.produce(dlq_name(self.decl.stream.name), dlq.drop_columns(["timestamp", "headers"]).append_column(
                "headers", pa.array(headers, pa.map_(pa.string(), pa.binary()))))
        self.stats.dead_lettered += len(bad)
        self.metrics["dead"].inc(len(bad))
        first = bad[0][1] if len(bad) == 1 else f"{bad[0][1]} (and {len(bad) - 1} more)"
        log.warning("%s: %d record(s) sent to %s at %s: %s", self.decl.name, len(bad),
                    dlq_name(self.decl.stream.name), stage, first)

    # -- the loop ------------------------------------------------------------------------------

    def flush(self) -> None:
        if isinstance(self.engine, StatefulEngine):
            self.engine.flush()

    def run(self, stop: threading.Event) -> None:
        """Process until `stop` is set; the batch in flight and pending outputs are committed first.

        An error is recorded in `stats.error` and raised (the caller reports it: under `keel up` the
        supervisor logs it and starts a fresh Runner, which resumes from the last commit). A Runner
        is not restarted after `run` returns or raises."""
        try:
            self.start()
            while not stop.is_set():
                self.step(timeout=0.2)
            self.flush()
        except Exception as exc:
            self.stats.error = str(exc) if isinstance(exc, KeelError) else f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._release()

    def _release(self) -> None:
        """Leave the group and give up the processor's claim; a failure here must not hide the run's error."""
        try:
            if self.consumer is not None:
                self.consumer.close()
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk; the kernel drops the group's flocks anyway
            log.warning("%s: leaving the consumer group failed: %s", self.decl.name, exc)
        finally:
            if isinstance(self.engine, StatefulEngine):
                self.engine.close()
