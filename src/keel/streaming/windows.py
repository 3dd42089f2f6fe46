"""Keyed aggregations over event-time windows, one micro-batch at a time.

State is a Polars frame of *partial* measures per (window_start, key) for the windows still
open. Each batch is reduced to partials with one group-by, merged into the state with another,
and the windows whose end is at or before the watermark are closed and emitted.

Watermark = the smallest, over the stream's partitions, of the greatest event time seen in that
partition, minus the allowed lateness; it never goes back. (Per partition, because partitions are
read at different paces: one partition's progress must not make another's events late. A
processor passes the partitions that are *active*: assigned, and not idle (no records for a
while, see `keel.streaming.stateful`), so an idle partition does not hold the watermark back
forever, as Flink's idleness timeout. An active partition not seen yet holds it where it is.) An event is *late* when every window it
falls in had already closed when its batch arrived (window end <= the watermark before the batch):
it is kept out of the state and returned to the caller, which writes it to the side output
(the lake table ``<aggregation>_late``). An event within the allowed lateness is merged into its
still-open window, however out of order it comes.

Tumbling and hopping windows live here; session windows in `keel.streaming.sessions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from keel.project.declare import Aggregation
from keel.project.schema import EVENT_TIME
from keel.streaming.decode import EARLIEST_US, LATEST_US
from keel.streaming.measures import Measure, final_expr, merge_exprs, partial_exprs

WSTART, WEND = "window_start", "window_end"


@dataclass
class Emitted:
    closed: pl.DataFrame  # final rows of windows closed by this batch
    running: pl.DataFrame  # current values of windows touched by this batch (still open)
    late: pl.DataFrame  # events that arrived after their window closed


def advance_watermark(marks: dict[int, int], events: pl.DataFrame, partitions: np.ndarray | None,
                      lateness_us: int, current: int | None, active: set[int] | None = None) -> int | None:
    """Update the per-partition greatest event times `marks` with a batch; return the new watermark."""
    t = pl.col(EVENT_TIME).dt.epoch("us")
    if events.height:
        if partitions is None:
            highs = {0: int(events.select(t.max()).item())}
        else:
            per = events.select(t.alias("t")).with_columns(pl.Series("p", partitions)).group_by("p").agg(pl.col("t").max())
            highs = dict(zip(per.get_column("p").to_list(), per.get_column("t").to_list()))
        for p, high in highs.items():
            marks[p] = max(marks.get(p, high), high)
    counted = [marks[p] for p in active if p in marks] if active else list(marks.values())
    if not counted or (active and any(p not in marks for p in active)):
        return current
    wm = min(counted) - lateness_us
    return wm if current is None else max(current, wm)


def overflowing(events: pl.DataFrame, before_us: int, after_us: int) -> list[tuple[int, str]]:
    """(index, reason) of the events whose windows, reaching from `before_us` before the event to
    `after_us` after it, would leave the years 1-9999 (no datetime of Python, Spark or Delta holds
    such a window's bounds: the aggregation would crash on them)."""
    if events.height == 0:
        return []
    t = events.get_column(EVENT_TIME).dt.epoch("us").to_numpy()
    bad = np.flatnonzero((t > LATEST_US - after_us) | (t < EARLIEST_US + before_us)).tolist()
    return [(i, f"event time {np.datetime64(int(t[i]), 'us')}Z: its window would end after the year 9999 "
                "or start before the year 1") for i in bad]


class WindowState:
    """Open tumbling or hopping windows of one aggregation (see the module docstring)."""

    def __init__(self, decl: Aggregation, state: pl.DataFrame | None = None, watermark_us: int | None = None) -> None:
        if decl.window.type == "session":
            raise ValueError("session windows are kept by keel.streaming.sessions.SessionState")
        self.decl = decl
        self.size_us = int(decl.window.size * 1_000_000)
        self.every_us = int((decl.window.every or decl.window.size) * 1_000_000)
        self.lateness_us = int(decl.lateness * 1_000_000)
        self.measures: dict[str, Measure] = decl.measures
        self.state = state
        self.watermark_us = watermark_us  # None until the first event
        self.late_count = 0
        self.marks: dict[int, int] = {}  # partition -> greatest event time seen (µs)
        self._partial_exprs = [e for name, m in self.measures.items() for e in partial_exprs(m, name)]
        self._merge_exprs = [e for name, m in self.measures.items() for e in merge_exprs(m, name)]

    def unrepresentable(self, events: pl.DataFrame) -> list[tuple[int, str]]:
        """Events whose windows cannot be represented (see `overflowing`); `update` must not get them."""
        return overflowing(events, self.size_us, self.size_us)

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
        return framed.group_by(WSTART, self.decl.by).agg(self._partial_exprs)

    def _merge(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        both = pl.concat([f for f in frames if f is not None and f.height], how="vertical_relaxed")
        return both.group_by(WSTART, self.decl.by).agg(self._merge_exprs)

    def final(self, partial: pl.DataFrame) -> pl.DataFrame:
        """Partials -> output rows: window_start, window_end (UTC), key, measures."""
        finals = [final_expr(m, name) for name, m in self.measures.items()]
        return partial.select(
            pl.from_epoch(pl.col(WSTART), "us").dt.replace_time_zone("UTC").alias(WSTART),
            pl.from_epoch(pl.col(WSTART) + self.size_us, "us").dt.replace_time_zone("UTC").alias(WEND),
            pl.col(self.decl.by),
            *finals,
        )

    def _split_late(self, events: pl.DataFrame, framed: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        if self.watermark_us is None:
            return framed, events.clear()
        closed_window = pl.col(WSTART) + self.size_us <= self.watermark_us
        if self.every_us == self.size_us:  # one window per event: the event is late iff its window closed
            mask = framed.select(closed_window).to_series()
            if not mask.any():
                return framed, events.clear()
            return framed.filter(~mask), events.filter(mask)
        t = pl.col(EVENT_TIME).dt.epoch("us")
        # hopping: late iff even its last window (the one starting last) has closed
        is_late = ((t // self.every_us) * self.every_us + self.size_us) <= self.watermark_us
        late = events.filter(is_late)
        if late.height == 0:
            return framed.filter(~closed_window), late
        return framed.filter(~closed_window & ~is_late), late

    def update(self, events: pl.DataFrame, partitions: np.ndarray | None = None,
               active: set[int] | None = None) -> Emitted:
        if events.height == 0:
            empty = self.final(self._partials(self._assign(events)))
            return Emitted(empty, empty, events)
        framed = self._assign(events)
        framed, late = self._split_late(events, framed)
        if late.height and partitions is not None:  # the watermark counts on-time events only
            partitions = partitions[~events.get_column("event_id").is_in(late.get_column("event_id").implode()).to_numpy()]
            events = events.filter(~pl.col("event_id").is_in(late.get_column("event_id").implode()))
        elif late.height:
            events = events.filter(~pl.col("event_id").is_in(late.get_column("event_id").implode()))
        self.late_count += late.height
        self.watermark_us = advance_watermark(self.marks, events, partitions, self.lateness_us, self.watermark_us, active)
        partial = self._partials(framed)
        merged = self._merge([self.state, partial]) if self.state is not None and self.state.height else partial
        is_closed = pl.col(WSTART) + self.size_us <= (self.watermark_us if self.watermark_us is not None else -2**62)
        closed = merged.filter(is_closed)
        self.state = merged.filter(~is_closed)
        running = self.state.join(partial.select(WSTART, self.decl.by), on=[WSTART, self.decl.by], how="semi")
        return Emitted(self.final(closed).sort(WSTART, self.decl.by), self.final(running), late)
