"""The one interface between the processor loop (`keel.streaming.runner`) and its engines.

An engine turns a processor's polled batches into committed outputs, exactly once into the lake:
`keel.streaming.stateless` (`keel.land`, `keel.processor`) and `keel.streaming.stateful`
(`keel.aggregate`, `keel.stateful`) implement it. The loop, `keel replay` and tests drive an
engine only through `ProcessorEngine`; an engine never calls back into whoever drives it: what
it reports (dead letters, late events) goes into a `Tally` the driver reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from keel.bus import Consumer
from keel.errors import BackendError, ConflictError

log = logging.getLogger("keel.stream")


@dataclass
class Tally:
    """Counts an engine adds to while it processes, for the driver's stats; `take` empties it."""

    dead_lettered: int = 0
    late: int = 0

    def take(self) -> tuple[int, int]:
        counts = self.dead_lettered, self.late
        self.dead_lettered = self.late = 0
        return counts


class ProcessorEngine(Protocol):
    """How one processor's batches become committed outputs.

    The driver calls `recover` once, first; then `process` for each polled batch that holds
    records and `idle` for each poll that found none; `flush` when it stops in good order; and
    `close` last, always, also after an error (and also when `recover` was never called).
    """

    @property
    def reads_every_partition(self) -> bool:
        """True if the consumer must be assigned every partition of the stream (one instance per
        processor), False if it joins the consumer group and gets its share."""
        ...

    @property
    def watermark_us(self) -> int | None:
        """The event-time watermark of the last commit (None for a processor without windows)."""
        ...

    def recover(self, consumer: Consumer) -> None:
        """Take `consumer` (whose records `process` will get), restore the processor's committed
        state and position, re-deliver outputs that may not have landed, and seek `consumer` to
        where processing resumes. The driver may seek again afterwards (a replay does)."""
        ...

    def process(self, batch: pa.RecordBatch) -> int:
        """Process one polled batch: decode, run the user's function, dead-letter what fails, and
        commit what is due; return how many records it held."""
        ...

    def idle(self) -> None:
        """A poll found nothing: commit what is pending or follow a new assignment."""
        ...

    def flush(self) -> None:
        """Commit everything pending (a stop in good order)."""
        ...

    def close(self) -> None:
        """Give up what this process holds for the processor (e.g. its claim); never raises for
        an engine that holds nothing. The consumer is closed by the driver."""
        ...


def commit_group(consumer: Consumer, processor: str, offsets: dict[int, int]) -> None:
    """Commit the group's offsets (they serve lag and a fresh start; exactness comes from the lake
    commits). A commit refused because partitions moved in a rebalance is not an error here: the
    new owner resumes from the lake, so this member just goes on with what it still owns. A commit
    that cannot be written (a full disk, a broker away) is not worth a restart either: the next
    batch commits again, and only `keel status` lags meanwhile."""
    try:
        consumer.commit(offsets)
    except ConflictError as exc:
        log.info("%s: %s", processor, exc)
    except BackendError as exc:
        log.warning("%s: offsets not committed for keel status (the lake holds the position): %s",
                    processor, exc)
