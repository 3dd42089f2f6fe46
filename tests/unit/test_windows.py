"""Event-time windows: results equal a batch recomputation, however the stream is cut into batches."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import polars as pl

import keel
from keel.project.catalog import collecting
from keel.streaming.windows import WindowState


class View(keel.Event):
    user_id: str
    item_id: str


def declaration(window: keel.project.declare.Window, lateness: str = "0s") -> keel.project.declare.Aggregation:
    with collecting():
        s = keel.stream("views", View)

        @keel.aggregate(s, by="item_id", window=window, lateness=lateness, into=[keel.table("out")])
        def counts(w):  # type: ignore[no-untyped-def]
            return {"views": w.count(), "users": w.n_unique("user_id")}
    return counts


BASE = datetime(2024, 1, 1, tzinfo=timezone.utc)


def events(seconds: list[float], items: list[str], users: list[str] | None = None) -> pl.DataFrame:
    users = users or [f"u{i % 3}" for i in range(len(seconds))]
    return pl.DataFrame({
        "event_id": [f"e{i}-{s}" for i, s in enumerate(seconds)],
        "event_time": [BASE + timedelta(seconds=s) for s in seconds],
        "user_id": users, "item_id": items,
    }).with_columns(pl.col("event_time").dt.cast_time_unit("us"))


def test_tumbling_counts_match_batch_recomputation_for_any_cut() -> None:
    secs = [i * 7.0 for i in range(200)]
    items = [f"i{i % 5}" for i in range(200)]
    all_events = events(secs, items)
    expected = (all_events.with_columns((pl.col("event_time").dt.epoch("s") // 60).alias("w"))
                .group_by("w", "item_id").agg(pl.len().alias("views")).sort("w", "item_id"))
    for cut in (1, 13, 200):
        state = WindowState(declaration(keel.tumbling("1m")))
        closed = [state.update(all_events.slice(i, cut)).closed for i in range(0, 200, cut)]
        got = pl.concat(closed).sort("window_start", "item_id")
        # every window but the last (still open) is closed, with the batch recomputation's counts
        want = expected.filter(pl.col("w") < expected.get_column("w").max())
        assert got.get_column("views").to_list() == want.get_column("views").to_list()
        assert got.height == want.height


def test_late_events_are_counted_and_returned_not_merged() -> None:
    state = WindowState(declaration(keel.tumbling("1m"), lateness="10s"))
    state.update(events([0, 30, 125], ["a", "a", "a"]))  # watermark 115 s: window [0, 60) closed
    out = state.update(events([50, 65], ["a", "a"]))  # 50 s is late; 65 s is in the open window [60, 120)
    assert out.late.get_column("event_time").to_list() == [BASE + timedelta(seconds=50)]
    assert state.late_count == 1
    assert out.closed.height == 0


def test_within_lateness_is_merged() -> None:
    state = WindowState(declaration(keel.tumbling("1m"), lateness="30s"))
    state.update(events([0, 70], ["a", "a"]))  # watermark 40 s: nothing closed
    out = state.update(events([20, 100], ["a", "a"]))  # 20 s is out of order but in time; watermark 70 s
    assert out.late.height == 0
    (row,) = out.closed.to_dicts()
    assert row["views"] == 2 and row["window_start"] == BASE


def test_hopping_windows_count_each_event_in_each_window() -> None:
    state = WindowState(declaration(keel.hopping("2m", "1m")))
    out = state.update(events([30, 90, 400], ["a", "a", "a"]))
    got = {r["window_start"]: r["views"] for r in out.closed.to_dicts()}
    assert got[BASE - timedelta(minutes=1)] == 1  # [-60, 60): the 30 s event
    assert got[BASE] == 2  # [0, 120): both
    assert got[BASE + timedelta(minutes=1)] == 1  # [60, 180): the 90 s event


def test_distinct_users_measure() -> None:
    state = WindowState(declaration(keel.tumbling("1m")))
    state.update(events([1, 2, 3], ["a", "a", "a"], ["x", "y", "x"]))
    out = state.update(events([200], ["a"], ["z"]))
    (row,) = out.closed.to_dicts()
    assert row["users"] == 2 and row["views"] == 3
