"""Keyed aggregations over event-time windows, one micro-batch at a time.

State is a Polars frame of *partial* measures per (window_start, key) for the windows still
open. Each batch is reduced to partials with one group-by, merged into the state with another,
and the windows whose end is at or before the watermark are closed and emitted.

Watermark = the greatest event time seen so far minus the allowed lateness (one watermark per
aggregation across its partitions). An event whose window had already closed when it arrived
is late: it is counted and returned to the caller for routing, never merged silently.
Tumbling and hopping windows are supported; session windows are planned (issue 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from keel.declare import Aggregation
from keel.schema import EVENT_TIME
from keel.streaming.measures import Measure

WSTART, WEND = "window_start", "window_end"


@dataclass
class Emitted:
    closed: pl.DataFrame  # final rows of windows closed by this batch
    running: pl.DataFrame  # current values of windows touched by this batch (still open)
    late: pl.DataFrame  # events that arrived after their window closed


class WindowState:
    def __init__(self, decl: Aggregation, state: pl.DataFrame | None = None, watermark_us: int | None = None) -> None:
        if decl.window.type == "session":
            raise NotImplementedError("session windows are not supported yet; use tumbling or hopping")
        self.decl = decl
        self.size_us = int(decl.window.size * 1_000_000)
        self.every_us = int((decl.window.every or decl.window.size) * 1_000_000)
        self.lateness_us = int(decl.lateness * 1_000_000)
        self.measures: dict[str, Measure] = decl.measures
        self.state = state
        self.watermark_us = watermark_us  # None until the first event
        self.late_count = 0

    def _assign(self, events: pl.DataFrame) -> pl.DataFrame:
        """One row per (event, window it falls in), with window_start in µs."""
        t = pl.col(EVENT_TIME).dt.epoch("us")
        last = (t // self.every_us) * self.every_us
        if self.every_us == self.size_us:
            return events.with_columns(last.alias(WSTART))
        hops = -(-self.size_us // self.every_us)
        starts = pl.concat_list([last - i * self.every_us for i in range(hops)])
        framed = events.with_columns(starts.alias(WSTART)).explode(WSTART)
        return framed.filter(pl.col(WSTART) + self.size_us > t)

    def _partials(self, framed: pl.DataFrame) -> pl.DataFrame:
        exprs = [e for name, m in self.measures.items() for e in m.partial(name)]
        return framed.group_by(WSTART, self.decl.by).agg(exprs)

    def _merge(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        both = pl.concat([f for f in frames if f is not None and f.height], how="vertical_relaxed")
        exprs = [e for name, m in self.measures.items() for e in m.merge(name)]
        return both.group_by(WSTART, self.decl.by).agg(exprs)

    def _final(self, partial: pl.DataFrame) -> pl.DataFrame:
        finals = [m.final(name) for name, m in self.measures.items()]
        return partial.select(
            pl.from_epoch(pl.col(WSTART), "us").dt.replace_time_zone("UTC").alias(WSTART),
            pl.from_epoch(pl.col(WSTART) + self.size_us, "us").dt.replace_time_zone("UTC").alias(WEND),
            pl.col(self.decl.by),
            *finals,
        ).sort(WSTART, self.decl.by)

    def update(self, events: pl.DataFrame) -> Emitted:
        empty = self._final(self._partials(self._assign(events.clear())))
        if events.height == 0:
            return Emitted(empty, empty, events)
        framed = self._assign(events)
        if self.watermark_us is not None:
            is_late = pl.col(WSTART) + self.size_us <= self.watermark_us
            late_ids = framed.filter(is_late).get_column("event_id").unique()
            framed = framed.filter(~is_late)
            late = events.filter(pl.col("event_id").is_in(late_ids.implode()) &
                                 ~pl.col("event_id").is_in(framed.get_column("event_id").implode()))
        else:
            late = events.clear()
        self.late_count += late.height
        batch_max = int(events.select(pl.col(EVENT_TIME).dt.epoch("us").max()).item())
        wm = batch_max - self.lateness_us
        self.watermark_us = wm if self.watermark_us is None else max(self.watermark_us, wm)
        partial = self._partials(framed)
        touched = partial.select(WSTART, self.decl.by)
        merged = self._merge([self.state, partial]) if self.state is not None else partial
        is_closed = pl.col(WSTART) + self.size_us <= self.watermark_us
        closed = merged.filter(is_closed)
        self.state = merged.filter(~is_closed)
        running = self.state.join(touched, on=[WSTART, self.decl.by], how="semi")
        return Emitted(self._final(closed), self._final(running), late)
