"""Running one processor: poll a micro-batch, process it columnar, commit to its sinks.

The loop is here; what a batch does and how it commits exactly once is the processor's engine,
driven only through `keel.streaming.base.ProcessorEngine` (recover, process, idle, flush, close):

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

import pyarrow as pa

from keel.bus import Consumer
from keel.engines import Engines
from keel.errors import KeelError
from keel.monitor.streams import processor_metrics
from keel.project.declare import Aggregation, Processor
from keel.streaming.base import ProcessorEngine, Tally
from keel.streaming.deadletters import DeadLetters
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


def processor_engine(decl: Processor | Aggregation, engines: Engines, dead_letters: DeadLetters, tally: Tally,
                     min_commit_seconds: float = 0.05) -> ProcessorEngine:
    """The engine that runs `decl`: stateful for an aggregation or a keyed-state processor."""
    if isinstance(decl, Aggregation) or decl.state_key is not None:
        return StatefulEngine(decl, engines, dead_letters, tally, min_commit_seconds=min_commit_seconds)
    return StatelessEngine(decl, engines, dead_letters)


class Runner:
    """One processor or aggregation run on `engines` (bus, lake, views, state_dir)."""

    def __init__(self, decl: Processor | Aggregation, engines: Engines, max_records: int = 50_000,
                 min_commit_seconds: float = 0.05) -> None:
        self.decl = decl
        self.engines = engines
        self.max_records = max_records
        self.stats = Stats()
        self.consumer: Consumer | None = None
        self.metrics = processor_metrics(decl.name)
        self.tally = Tally()
        self.dead_letters = DeadLetters(engines.bus, decl.name, decl.stream.name, self.tally)
        self.engine = processor_engine(decl, engines, self.dead_letters, self.tally, min_commit_seconds)
        self._rate_mark = (time.monotonic(), 0)
        self._lag_at = 0.0

    @property
    def writer(self) -> str:
        return self.decl.name

    @property
    def watermark_us(self) -> int | None:
        return self.engine.watermark_us

    def start(self) -> None:
        """Join the consumer group (a stateful processor takes every partition) and recover."""
        stream = self.decl.stream
        bus = self.engines.bus
        if self.engine.reads_every_partition:
            count = len(bus.describe(stream.name).partitions)
            self.consumer = bus.consumer(stream.name, group=self.decl.name, partitions=list(range(count)))
        else:
            self.consumer = bus.consumer(stream.name, group=self.decl.name)
        self.engine.recover(self.consumer)

    def step(self, timeout: float = 0.2) -> int:
        """Process at most one micro-batch; return how many records it held."""
        assert self.consumer is not None, "call start() first"
        batch = self.consumer.poll(self.max_records, timeout)
        if batch.num_rows == 0:
            self.engine.idle()
            self._observe_lag(force=False)
            return 0
        t0 = time.perf_counter()
        try:
            self.engine.process(batch)
        finally:
            dead, late = self.tally.take()
            self.stats.dead_lettered += dead
            self.stats.late += late
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
        watermark = self.engine.watermark_us
        if watermark is not None:
            self.metrics["watermark_delay"].set(time.time() - watermark / 1e6)

    def _observe_lag(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._lag_at < 5.0:
            return
        self._lag_at = now
        try:
            info = self.engines.bus.describe(self.decl.stream.name)
        except KeelError:
            return
        mine = set(self.consumer.assignment) if self.consumer is not None else set()
        lag = sum(max(0, p.end_offset - self.stats.offsets.get(p.partition, p.start_offset))
                  for p in info.partitions if p.partition in mine)
        self.metrics["lag"].set(lag)

    # -- the loop ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Commit what the engine has pending."""
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
            self.engine.close()
