"""`keel replay PROCESSOR --from OFFSET|TIME`: rebuild a processor's tables and views from the bus.

A replay runs the processor's own code over the stream's history, from a start (an offset applied
to every partition, or a time: the first record at or after it in each partition) up to the end
offsets at the moment the replay begins, with a private consumer group and private state. Then:

* **the end is checked, not guessed.** The replay reads every partition up to its end offset taken
  at the start, however slowly the bus delivers; a partition that delivers nothing for
  `stall_seconds` stops the replay with an error naming it and how far it got, before any table is
  replaced or the position moved (views may have had upserts by then, which never regress). (A time start takes a partition whose last record is older than the time as
  having nothing to replay: record timestamps are taken as non-decreasing within a partition.)
* **lake tables are rebuilt whole, by overwrite.** The replayed rows are written to a scratch lake
  (a local folder in the project's state directory) and, once the replay has reached its end, each
  target table is replaced by them in one Delta commit (`Lake.overwrite`): readers see the old rows
  or the rebuilt ones, never a mix, and no row is duplicated. Because the table is replaced, a
  processor with lake tables replays from the start of the stream's history only (`--from 0`); a
  later start is refused with that explanation (rows from before it could not be told apart).
* **views** get their usual versioned upserts, from any start: a replay never regresses a value.
* **the processor's position** moves to the replay's end: stateless writers commit a fence at the
  end offsets (so the processor, when it runs again, continues after them), and a stateful
  processor's checkpoint becomes the replay's last unit.

Stop the processor during a replay (stop `keel up`, or the processor's processes): a stateless
processor still running would be fenced off and resume after the replay's end.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from keel.bus import Consumer
from keel.engines import Engines
from keel.errors import BackendError, KeelError, NotFoundError
from keel.lake import Lake, open_lake
from keel.project.catalog import Catalog
from keel.project.declare import Aggregation, Processor, Table
from keel.streaming.checkpoint import claim, release
from keel.streaming.runner import Runner, is_stateful
from keel.streaming.stateless import decode, encode, writer_of


@dataclass(frozen=True)
class ReplayResult:
    processor: str
    records: int
    tables: dict[str, int]  # table -> rows after the rebuild
    end_offsets: dict[int, int]


def find_processor(catalog: Catalog, name: str) -> Processor | Aggregation:
    """The processor or aggregation `name` of the project, or NotFoundError naming those it has."""
    found = catalog.processors.get(name)
    if found is None:
        known = ", ".join(sorted(catalog.processors)) or "none"
        raise NotFoundError(f"no processor {name!r} in this project; processors: {known}")
    return found


STALL_SECONDS = 60.0


def replay(decl: Processor | Aggregation, engines: Engines, *, from_offset: int | None = None,
           from_time: datetime | None = None, progress: Callable[[int], None] | None = None,
           stall_seconds: float = STALL_SECONDS, clock: Callable[[], float] = time.monotonic) -> ReplayResult:
    """Rebuild the outputs of `decl` (see `find_processor`) on `engines` from the bus (see the module
    docstring). Give exactly one start.

    Raises ``BackendError``, having overwritten and moved nothing, if the bus stops delivering for
    `stall_seconds` (measured with `clock`) before every partition reached its end offset.
    """
    if (from_offset is None) == (from_time is None):
        raise KeelError("replay needs one start: an offset (--from 0) or a time (--from 2024-05-01T00:00:00Z)")
    tables = [t for t in decl.into if isinstance(t, Table)]
    info = engines.bus.describe(decl.stream.name)
    end = {p.partition: p.end_offset for p in info.partitions}
    earliest = {p.partition: p.start_offset for p in info.partitions}
    if tables and (from_time is not None or any((from_offset or 0) > earliest[p] for p in end)):
        raise KeelError(f"{decl.name} writes lake tables ({', '.join(t.name for t in tables)}), which a replay "
                        "rebuilds whole: replay it from the start of the stream with --from 0")
    # a stateful processor's state is replaced at the end: refused while the processor runs elsewhere
    claimed = is_stateful(decl) and claim(engines.state_dir, decl.name, doing="replays")
    scratch = engines.state_dir / f"replay-{decl.name}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    shadow = replace(decl, name=f"{decl.name}__replay")
    # the shadow run: the real bus and views, a scratch lake and private state
    private = replace(engines, lake=open_lake(f"file://{scratch}/lake"), state_dir=scratch / "state")
    private.state_dir.mkdir()
    runner = Runner(shadow, private)
    group = f"{decl.name}__replay_{uuid.uuid4().hex[:6]}"
    consumer = runner.consumer = engines.bus.consumer(decl.stream.name, group=group, partitions=sorted(end))
    try:
        runner.engine.recover(consumer)
        reader = _Reader(decl.name, consumer, end, stall_seconds, clock)
        if from_time is not None:
            reader.start_at_time(int(from_time.timestamp() * 1000), earliest)
        else:
            reader.start_at({p: max(from_offset or 0, earliest[p]) for p in end})
        records = reader.read(runner.engine.process, progress)
        runner.flush()
        counts = {t.name: _swap_in(engines.lake, private.lake, t.name) for t in tables}
        _move_position(engines, decl, end, private.state_dir / shadow.name)
        return ReplayResult(decl.name, records, counts, end)
    finally:
        consumer.close()
        runner.engine.close()
        shutil.rmtree(scratch, ignore_errors=True)
        if claimed:
            release(engines.state_dir, decl.name)


class _Reader:
    """Reads a replay's stream up to the end offsets taken at its start, or refuses (see the module)."""

    def __init__(self, processor: str, consumer: Consumer, end: dict[int, int], stall_seconds: float,
                 clock: Callable[[], float]) -> None:
        self.processor, self.consumer, self.end = processor, consumer, end
        self.stall_seconds, self.clock = stall_seconds, clock
        self.seen = {p: -1 for p in end}  # the highest offset below the end each partition delivered

    def start_at(self, offsets: dict[int, int]) -> None:
        for p, o in offsets.items():
            self.consumer.seek(p, o)
            self.seen[p] = o - 1

    def start_at_time(self, timestamp_ms: int, earliest: dict[int, int]) -> None:
        # a partition whose last record is older than the start has nothing to replay
        last = self._last_records({p for p in self.end if self.end[p] > earliest[p]})
        for p in self.end:
            self.seen[p] = self.end[p] - 1 if p not in last or last[p] < timestamp_ms else earliest[p] - 1
        self.consumer.seek_time(timestamp_ms)

    def _last_records(self, partitions: set[int]) -> dict[int, int]:
        """partition -> timestamp (ms) of its record at end - 1."""
        for p in partitions:
            self.consumer.seek(p, self.end[p] - 1)
        found: dict[int, int] = {}
        self._poll_until(lambda: partitions <= set(found), lambda batch: found.update(
            (p, ts) for p, o, ts in zip(batch.column("partition").to_pylist(), batch.column("offset").to_pylist(),
                                        batch.column("timestamp").cast(pa.int64()).to_pylist())
            if o == self.end[p] - 1))
        return found

    def read(self, process: Callable[[pa.RecordBatch], object], progress: Callable[[int], None] | None) -> int:
        records = 0
        ends = pa.array([self.end.get(p, 0) for p in range(max(self.end, default=-1) + 1)], pa.int64())

        def take(batch: pa.RecordBatch) -> None:
            nonlocal records
            parts = batch.column("partition")
            tops = pa.table({"p": parts, "o": batch.column("offset")}).group_by("p").aggregate([("o", "max")])
            for p, top in zip(tops.column("p").to_pylist(), tops.column("o_max").to_pylist()):
                # past its end (records produced since the start) means the partition is done, gaps or not
                self.seen[p] = max(self.seen[p], min(top, self.end[p] - 1))
            limit = pc.take(ends, parts)
            batch = batch.filter(pc.less(batch.column("offset"), limit))
            if batch.num_rows:
                process(batch)
                records += batch.num_rows
                if progress is not None:
                    progress(records)

        self._poll_until(lambda: all(self.seen[p] >= self.end[p] - 1 for p in self.end), take)
        return records

    def _poll_until(self, done: Callable[[], bool], take: Callable[[pa.RecordBatch], None]) -> None:
        moved = self.clock()
        while not done():
            batch = self.consumer.poll(50_000, 0.5)
            if batch.num_rows:
                moved = self.clock()
                take(batch)
            elif self.clock() - moved >= self.stall_seconds:
                behind = ", ".join(f"partition {p} at offset {self.seen[p] + 1} of {self.end[p]}"
                                   for p in sorted(self.end) if self.seen[p] < self.end[p] - 1)
                raise BackendError(
                    f"replay of {self.processor} stopped: the bus delivered nothing for {self.stall_seconds:.0f} s "
                    f"before the end offsets taken at the start ({behind or 'probing the last records'}); "
                    f"nothing was overwritten (no table replaced, the processor's position unmoved; views only "
                    f"got versioned upserts, which never regress): check the bus, then run the replay again")


def _swap_in(lake: Lake, scratch: Lake, table: str) -> int:
    """Replace `table` by the replay's rows in one commit; return its row count."""
    fresh = scratch.read(table) if table in scratch.list_tables() else None
    if fresh is None:
        if table in lake.list_tables():
            lake.overwrite(table, lake.describe(table).schema.empty_table())
        return 0
    lake.create_table(table, fresh.schema)
    lake.overwrite(table, fresh)
    return int(lake.describe(table).rows)


def _move_position(engines: Engines, decl: Processor | Aggregation, end: dict[int, int], shadow_state: Path) -> None:
    lake = engines.lake
    if is_stateful(decl):
        target = engines.state_dir / decl.name
        if target.exists():
            shutil.rmtree(target)
        if shadow_state.exists():
            shutil.copytree(shadow_state, target)
        return
    for t in (t for t in decl.into if isinstance(t, Table)):
        if t.name not in lake.list_tables():
            continue
        empty = lake.describe(t.name).schema.empty_table()
        for p, o in end.items():
            writer = writer_of(decl.name, p)
            seen = lake.writer_commit(t.name, writer)
            epoch = decode(seen.version)[0] if seen is not None else 0
            lake.append(t.name, empty, writer=writer, version=encode(epoch + 1, o), metadata={"fence": "replay"})
