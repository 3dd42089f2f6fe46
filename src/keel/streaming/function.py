"""A processor's own function over a batch, with its view lookups first; records it fails on are
dead-lettered and the rest go on."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from keel.kv.views import Views
from keel.project.declare import Aggregation, Processor
from keel.streaming.deadletters import DeadLetters
from keel.streaming.enrich import enrich
from keel.streaming.state import KeyedState


class UserFunction:
    """`decl`'s function (an aggregation has none: its events pass through), its lookups read from `views`."""

    def __init__(self, decl: Processor | Aggregation, views: Views, dead_letters: DeadLetters) -> None:
        self.decl, self.views, self.dead_letters = decl, views, dead_letters

    def __call__(self, events: pl.DataFrame, raw: pa.RecordBatch | None = None,
                 state: KeyedState | None = None) -> pl.DataFrame:
        """The processor's function over a batch (lookups first); failing records go to the DLQ.

        With `raw` (the batch's records), a batch the function raises on is retried record by
        record and the records that still raise are dead-lettered; without it, the error is raised."""
        decl = self.decl
        fn = decl.transform if isinstance(decl, Processor) else None
        if isinstance(decl, Processor):
            for lookup in decl.lookups:
                events = enrich(events, self.views, lookup)
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
            self.dead_letters.send(raw, bad)
            return pl.concat(good, how="vertical_relaxed") if good else call(events.clear())
