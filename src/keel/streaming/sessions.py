"""Session windows: per key, a session is a run of events with gaps shorter than `gap`.

State is a Polars frame of open sessions: key, first and last event time (µs) and the partial
measures. Each batch turns its events into one-instant partial sessions, puts them with the open
sessions of their keys, and merges every run whose next start is less than `gap` after the
greatest end so far (per key, sorted by start): one sort, one cumulative max and one group-by,
however many sessions a batch joins together (an event may bridge two sessions across batches).

A session's window is [first event, last event + gap). It closes when the watermark (greatest
event time seen minus the allowed lateness) reaches its end; it is then emitted and forgotten.
An event is late when its own one-event session would already be closed (event time + gap <= the
watermark before its batch): it goes to the side output, exactly as for tumbling windows.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from keel.project.declare import Aggregation
from keel.project.schema import EVENT_TIME
from keel.streaming.measures import Measure, final_expr, merge_exprs, partial_exprs
from keel.streaming.windows import WEND, WSTART, Emitted, advance_watermark, overflowing

_LAST = "__last_us"
_SID = "__session"


class SessionState:
    """Open session windows of one aggregation (see the module docstring)."""

    def __init__(self, decl: Aggregation, state: pl.DataFrame | None = None, watermark_us: int | None = None) -> None:
        if decl.window.type != "session":
            raise ValueError(f"SessionState keeps session windows, not {decl.window.type}")
        self.decl = decl
        self.gap_us = int(decl.window.size * 1_000_000)
        self.lateness_us = int(decl.lateness * 1_000_000)
        self.measures: dict[str, Measure] = decl.measures
        self.state = state
        self.watermark_us = watermark_us
        self.late_count = 0
        self.marks: dict[int, int] = {}
        self._partial_exprs = [e for name, m in self.measures.items() for e in partial_exprs(m, name)]
        self._merge_exprs = [e for name, m in self.measures.items() for e in merge_exprs(m, name)]

    def final(self, partial: pl.DataFrame) -> pl.DataFrame:
        finals = [final_expr(m, name) for name, m in self.measures.items()]
        return partial.select(
            pl.from_epoch(pl.col(WSTART), "us").dt.replace_time_zone("UTC").alias(WSTART),
            pl.from_epoch(pl.col(_LAST) + self.gap_us, "us").dt.replace_time_zone("UTC").alias(WEND),
            pl.col(self.decl.by),
            *finals,
        )

    def unrepresentable(self, events: pl.DataFrame) -> list[tuple[int, str]]:
        """Events whose session could not be represented (see `overflowing`); `update` must not get them."""
        return overflowing(events, 0, self.gap_us)

    def _instants(self, events: pl.DataFrame) -> pl.DataFrame:
        """Partial one-instant sessions: events of one key at one time are one partial."""
        t = pl.col(EVENT_TIME).dt.epoch("us")
        grouped = events.with_columns(t.alias(WSTART)).group_by(self.decl.by, WSTART).agg(self._partial_exprs)
        grouped = grouped.with_columns(pl.col(WSTART).alias(_LAST))
        return grouped.select(self.decl.by, WSTART, _LAST, pl.exclude(self.decl.by, WSTART, _LAST))

    def _merge(self, sessions: pl.DataFrame) -> pl.DataFrame:
        by = self.decl.by
        ordered = sessions.sort(by, WSTART)
        reach = pl.col(_LAST).cum_max().over(by).shift(1).over(by)
        starts = (reach.is_null() | (pl.col(WSTART) >= reach + self.gap_us)).cast(pl.Int64)
        marked = ordered.with_columns(starts.cum_sum().alias(_SID))
        return marked.group_by(_SID).agg(pl.col(by).first(), pl.col(WSTART).min(), pl.col(_LAST).max(),
                                        *self._merge_exprs).drop(_SID)

    def update(self, events: pl.DataFrame, partitions: np.ndarray | None = None,
               active: set[int] | None = None) -> Emitted:
        if events.height == 0:
            empty = self.final(self._instants(events))
            return Emitted(empty, empty, events)
        late = events.clear()
        if self.watermark_us is not None:
            is_late = events.select(pl.col(EVENT_TIME).dt.epoch("us") + self.gap_us <= self.watermark_us).to_series()
            if is_late.any():
                late = events.filter(is_late)
                events = events.filter(~is_late)
                partitions = partitions[~is_late.to_numpy()] if partitions is not None else None
        self.late_count += late.height
        self.watermark_us = advance_watermark(self.marks, events, partitions, self.lateness_us, self.watermark_us, active)
        fresh = self._instants(events)
        touched_keys = fresh.select(self.decl.by).unique()
        if self.state is not None and self.state.height:
            mine = self.state.join(touched_keys, on=self.decl.by, how="semi")
            others = self.state.join(touched_keys, on=self.decl.by, how="anti")
            joined = self._merge(pl.concat([mine, fresh.select(mine.columns)], how="vertical_relaxed"))
            merged = pl.concat([others, joined.select(others.columns)], how="vertical_relaxed")
        else:
            merged = self._merge(fresh)
        is_closed = pl.col(_LAST) + self.gap_us <= (self.watermark_us if self.watermark_us is not None else -2**62)
        closed = merged.filter(is_closed)
        self.state = merged.filter(~is_closed)
        running = self.state.join(touched_keys, on=self.decl.by, how="semi")
        return Emitted(self.final(closed).sort(WSTART, self.decl.by), self.final(running), late)
