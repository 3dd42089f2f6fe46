"""Stateless processors (`keel.land`, `keel.processor`): per-partition exactly-once into the lake.

Each partition p of the stream writes each lake table under its own writer id
``<processor>/p<p>``, with version ``epoch << 40 | next offset of p`` (see `encode`). So
processes sharing a stream's partitions through the consumer group never share a writer, and
offsets of one partition alone decide what was committed.

Fencing. A member that gets partition p (at start or on a rebalance) first commits an empty
*fence* with epoch + 1 and then computes p's position: the greatest offset among the writer's
commits from the one it read up to its fence. After the fence, a stale member (a "zombie" that
lost p but still runs) commits with its old epoch, which is not greater: Delta's transaction
check turns its append into a no-op (`append` returns False), and the zombie re-acquires p the
same way, reseeking to the lake's position. A zombie commit that landed *before* the fence is
counted by the scan, so the new owner starts after it: every record is in the lake once.

Several tables: each keeps its own position; a batch is written to a table only from that
table's position on (a crash between two tables' commits re-reads from the smaller one).
Views get keyed, versioned upserts (at least once, idempotent). The consumer group's offsets are
committed too, but only for `keel status`: the lake is the source of truth.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from keel.bus import Consumer
from keel.engines import Engines
from keel.project.declare import Processor, Table, View
from keel.project.schema import table_schema
from keel.streaming.base import commit_group
from keel.streaming.deadletters import DeadLetters
from keel.streaming.decode import decode_records, time_bounds
from keel.streaming.function import UserFunction
from keel.streaming.sinks import keyed_view_rows, write_view_rows

log = logging.getLogger("keel.stream")
SHIFT = 40
OFFSET_MASK = (1 << SHIFT) - 1


def encode(epoch: int, offset: int) -> int:
    return (epoch << SHIFT) | offset


def decode(version: int) -> tuple[int, int]:
    return version >> SHIFT, version & OFFSET_MASK


def writer_of(processor: str, partition: int) -> str:
    return f"{processor}/p{partition}"


@dataclass
class Owned:
    epoch: dict[str, int] = field(default_factory=dict)  # table -> epoch of our fence
    position: dict[str, int] = field(default_factory=dict)  # table -> next offset committed


class StatelessEngine:
    """A `keel.streaming.base.ProcessorEngine` for a processor without state: it joins the consumer
    group, so several processes share the stream's partitions."""

    reads_every_partition = False
    watermark_us: int | None = None  # no windows

    def __init__(self, decl: Processor, engines: Engines, dead_letters: DeadLetters) -> None:
        self.decl = decl
        self.lake, self.kv_views = engines.lake, engines.views
        self.dead_letters = dead_letters
        self.transform = UserFunction(decl, engines.views, dead_letters)
        self.tables = [t for t in self.decl.into if isinstance(t, Table)]
        self.views = [v for v in self.decl.into if isinstance(v, View)]
        self.owned: dict[int, Owned] = {}
        self.created = False
        self._consumer: Consumer | None = None

    @property
    def consumer(self) -> Consumer:
        assert self._consumer is not None, "call recover() first"
        return self._consumer

    # -- the lifecycle (see keel.streaming.base.ProcessorEngine) -------------------------------

    def recover(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self.sync()

    def idle(self) -> None:
        self.sync()

    def flush(self) -> None:
        """Nothing is pending between batches: each batch commits before `process` returns."""

    def close(self) -> None:
        """Nothing to give up: the consumer group's membership goes with the consumer."""

    # -- ownership -----------------------------------------------------------------------------

    def _create_tables(self, schema: pa.Schema) -> None:
        for t in self.tables:
            self.lake.create_table(t.name, schema, list(t.partition_by) or None)
        self.created = True

    def _ensure_tables(self) -> bool:
        """Create the tables when their schema is known without data (always for a landing)."""
        if self.created or not self.tables:
            return self.created
        if self.decl.transform is None:
            self._create_tables(table_schema(self.decl.stream.schema))
            return True
        existing = set(self.lake.list_tables())
        if all(t.name in existing for t in self.tables):
            self.created = True
        else:
            try:  # the output schema of the user's function on an empty batch
                empty = pl.from_arrow(table_schema(self.decl.stream.schema).empty_table())
                out = self.transform(empty)  # type: ignore[arg-type]
                if out.width:
                    self._create_tables(out.to_arrow().schema)
            except Exception:  # noqa: BLE001 - no schema yet: tables are created by the first output
                log.debug("%s: output schema unknown until the first batch", self.decl.name)
        return self.created

    def sync(self) -> None:
        """Follow the consumer's assignment: acquire new partitions, forget revoked ones."""
        now = set(self.consumer.assignment)
        for p in list(self.owned):
            if p not in now:
                del self.owned[p]
        for p in sorted(now - set(self.owned)):
            self.acquire(p)

    def acquire(self, p: int) -> None:
        owned = Owned()
        if self._ensure_tables():
            for t in self.tables:
                owned.epoch[t.name], owned.position[t.name] = self._fence(t.name, writer_of(self.decl.name, p))
            self.consumer.seek(p, min(owned.position.values()))
        self.owned[p] = owned

    def _fence(self, table: str, writer: str) -> tuple[int, int]:
        lake = self.lake
        empty = lake.describe(table).schema.empty_table()
        while True:
            seen = lake.writer_commit(table, writer)
            epoch, position = decode(seen.version) if seen is not None else (0, 0)
            if lake.append(table, empty, writer=writer, version=encode(epoch + 1, position), metadata={"fence": "1"}):
                break
        # a commit of the old epoch may have landed between our read and our fence: count it
        for commit in lake.history(table, limit=200):
            if commit.get("writer") != writer:
                continue
            v = int(commit["writer_version"])
            if seen is not None and v == seen.version:
                break
            position = max(position, decode(v)[1])
        return epoch + 1, position

    # -- processing ----------------------------------------------------------------------------

    def process(self, batch: pa.RecordBatch) -> int:
        """Write one polled batch; return how many records were new (not already committed)."""
        self.sync()
        parts = batch.column("partition").to_numpy()
        offs = batch.column("offset").to_numpy()
        unknown = set(np.unique(parts).tolist()) - set(self.owned)
        for p in unknown:  # fetched before we saw the assignment: acquire, reseek, drop its records
            self.acquire(p)
        keep = ~np.isin(parts, list(unknown)) if unknown else np.ones(len(parts), dtype=bool)
        for p, owned in self.owned.items():
            if owned.position:
                keep &= ~((parts == p) & (offs < min(owned.position.values())))
        if not keep.all():
            batch = batch.filter(pa.array(keep))
            parts, offs = parts[keep], offs[keep]
        if batch.num_rows == 0:
            return 0
        decoded = decode_records(batch, self.decl.stream.schema, time_bounds(self.decl.stream),
                                 now_us=time.time_ns() // 1000)
        self.dead_letters.send(batch, decoded.bad, stage="decode")
        dead = {int(p) for p in parts[[i for i, _ in decoded.bad]].tolist()} if decoded.bad else set()
        events, good = decoded.events, decoded.rows
        if decoded.bad:  # from here on, the records that decoded (dead letters count as done below)
            batch, good_parts, good_offs = batch.take(pa.array(good)), parts[good], offs[good]
        else:
            good_parts, good_offs = parts, offs
        outputs = []
        next_offsets: dict[int, int] = {}
        for p in np.unique(parts).tolist():
            next_offsets[p] = int(offs[parts == p].max()) + 1
            mask = good_parts == p
            if not mask.any():  # only dead letters: move the position past them
                self._commit_partition(p, events.clear(), good_offs[mask], events.clear(), next_offsets[p], True)
                continue
            sub = events if mask.all() else events.filter(pl.Series(mask))
            out = self.transform(sub, batch.filter(pa.array(mask)) if not mask.all() else batch)
            outputs.append(out)
            if self.tables and out.height and not self.created:
                self._create_tables(out.to_arrow().schema)
                self.acquire(p)  # fence now that the tables exist
            self._commit_partition(p, sub, good_offs[mask], out, next_offsets[p], p in dead)
        key = self.decl.stream.key
        if outputs and key is not None:
            out_all = pl.concat(outputs, how="diagonal_relaxed") if len(outputs) > 1 else outputs[0]
            for v in self.views:
                write_view_rows(self.kv_views, v.name, keyed_view_rows(key, out_all))
        commit_group(self.consumer, self.decl.name, next_offsets)
        return int(parts.size)

    def _commit_partition(self, p: int, events: pl.DataFrame, offs: np.ndarray, out: pl.DataFrame, nxt: int,
                          dead: bool = False) -> None:
        """Append `out` (the rows of `events`, at offsets `offs`, of partition p up to `nxt`) to each
        table from its position on. With `dead` (records of this batch were dead-lettered) a table
        gets an empty commit when it has no rows, so that after a restart its position is past the
        dead letters and they are not read (and dead-lettered) again."""
        owned = self.owned.get(p)
        if owned is None or not self.created:
            return
        lake = self.lake
        for t in self.tables:
            start = owned.position.get(t.name, 0)
            if nxt <= start:
                continue
            rows = out
            if offs.size and start > int(offs.min()):  # this table is ahead of another: only its new records
                rows = self.transform(events.filter(pl.Series(offs >= start)))
            if rows.height or dead:
                data = rows.to_arrow() if rows.height else lake.describe(t.name).schema.empty_table()
                ok = lake.append(t.name, data, writer=writer_of(self.decl.name, p),
                                 version=encode(owned.epoch[t.name], nxt), metadata={"next_offset": str(nxt)})
                if not ok:
                    log.warning("%s: partition %d was fenced by another member; reacquiring it", self.decl.name, p)
                    self.acquire(p)
                    return
            owned.position[t.name] = nxt
