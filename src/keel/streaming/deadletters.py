"""A processor's dead letters: the records it cannot process, produced to `<stream>.dlq`.

Each keeps its key, value and timestamp, its own headers, and the context as headers: the reason,
the stage (decode, window, transform), the processor and the source partition and offset. `keel dlq`
shows and replays them (`keel.bus.ops`).
"""

from __future__ import annotations

import logging

import pyarrow as pa

from keel.bus import Bus, dlq_name
from keel.bus.ops import CONTEXT_HEADERS as _CONTEXT
from keel.errors import SchemaError
from keel.monitor.streams import processor_metrics
from keel.streaming.base import Tally

log = logging.getLogger("keel.stream")


class DeadLetters:
    """The dead-letter stream of `stream`, written for `processor`; counts go to `tally`."""

    def __init__(self, bus: Bus, processor: str, stream: str, tally: Tally) -> None:
        self.bus, self.processor, self.stream, self.tally = bus, processor, stream, tally
        self._metric = processor_metrics(processor)["dead"]

    def send(self, batch: pa.RecordBatch, bad: list[tuple[int, str]], stage: str = "transform") -> None:
        """Produce the records `bad` names (index in `batch`, reason) to the stream's dead-letter
        stream: key, value and timestamp unchanged, the record's own headers kept, and the context
        (reason, stage, processor, source partition and offset) added as headers."""
        if not bad:
            return
        rows = batch.take(pa.array([i for i, _ in bad]))
        headers = [[(k, v) for k, v in (own or []) if k not in _CONTEXT]
                   + [("error", err.encode()), ("stage", stage.encode()), ("processor", self.processor.encode()),
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
            self.bus.produce(dlq_name(self.stream), dlq)
        except SchemaError:  # a timestamp the dead-letter stream refuses (Kafka: beyond now + 1 h): now, kept aside
            stamps = rows.column("timestamp").cast(pa.int64()).to_pylist()
            headers = [h + [("source_timestamp", str(ms).encode())] for h, ms in zip(headers, stamps)]
            self.bus.produce(dlq_name(self.stream), dlq.drop_columns(["timestamp", "headers"]).append_column(
                "headers", pa.array(headers, pa.map_(pa.string(), pa.binary()))))
        self.tally.dead_lettered += len(bad)
        self._metric.inc(len(bad))
        first = bad[0][1] if len(bad) == 1 else f"{bad[0][1]} (and {len(bad) - 1} more)"
        log.warning("%s: %d record(s) sent to %s at %s: %s", self.processor, len(bad),
                    dlq_name(self.stream), stage, first)
