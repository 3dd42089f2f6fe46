"""Session windows and lateness: the documented results for in-order, out-of-order and late events,
and session results independent of how the stream is cut into micro-batches."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl

import keel
from keel.streaming.sessions import SessionState
from keel.streaming.windows import WindowState
from tests.unit.test_windows import BASE, declaration, events


def sessions_of(state: SessionState, batches: list[pl.DataFrame]) -> list[tuple[str, float, float, int]]:
    out = []
    for b in batches:
        out.append(state.update(b).closed)
    closed = pl.concat(out)
    return sorted((r["item_id"], (r["window_start"] - BASE).total_seconds(), (r["window_end"] - BASE).total_seconds(),
                   r["views"]) for r in closed.to_dicts())


def test_sessions_split_on_gaps_per_key() -> None:
    state = SessionState(declaration(keel.session("30s")))
    got = sessions_of(state, [events([0, 10, 25, 100, 5, 200, 500], ["a", "a", "a", "a", "b", "b", "c"])])
    # a: [0, 25] then [100]; b: [5] then [200]; c still open at the end
    assert got == [("a", 0, 55, 3), ("a", 100, 130, 1), ("b", 5, 35, 1), ("b", 200, 230, 1)]


def test_a_session_bridged_across_batches_is_one_session() -> None:
    state = SessionState(declaration(keel.session("30s"), lateness="60s"))
    first = state.update(events([0, 50], ["a", "a"]))  # two sessions so far: [0] and [50]
    assert first.closed.height == 0 and state.state is not None and state.state.height == 2
    got = sessions_of(state, [events([25], ["a"]), events([1000], ["z"])])  # 25 bridges them
    assert got == [("a", 0, 80, 3)]


def test_sessions_do_not_depend_on_the_batch_cut() -> None:
    rng = np.random.default_rng(3)
    secs = sorted(rng.uniform(0, 2000, 300).tolist())
    items = [f"i{k}" for k in rng.integers(0, 4, 300).tolist()]
    all_events = events(secs + [10_000], items + ["end"])
    results = []
    for cut in (1, 17, 301):
        state = SessionState(declaration(keel.session("40s")))
        results.append(sessions_of(state, [all_events.slice(i, cut) for i in range(0, all_events.height, cut)]))
    assert results[0] == results[1] == results[2]
    assert sum(r[3] for r in results[0]) == 300


def test_late_session_events_go_to_the_side_output() -> None:
    state = SessionState(declaration(keel.session("30s"), lateness="10s"))
    state.update(events([0, 100], ["a", "a"]))  # watermark 90: session [0] closed (0 + 30 <= 90)
    out = state.update(events([40, 70], ["a", "b"]))  # 40 + 30 <= 90: late; 70 + 30 > 90: on time
    assert out.late.get_column("event_time").to_list() == [BASE + timedelta(seconds=40)]
    assert state.late_count == 1


def test_tumbling_out_of_order_within_lateness_and_late_beyond() -> None:
    state = WindowState(declaration(keel.tumbling("1m"), lateness="20s"))
    a = state.update(events([10, 70], ["x", "x"]))  # watermark 50: nothing closed
    assert a.closed.height == 0
    b = state.update(events([55, 85], ["x", "x"]))  # 55 is out of order, in time; watermark 65 closes [0, 60)
    assert [(r["views"], r["window_start"]) for r in b.closed.to_dicts()] == [(2, BASE)]
    c = state.update(events([30, 90], ["x", "x"]))  # 30: its window closed -> late, not merged
    assert c.late.height == 1 and c.closed.height == 0
    d = state.update(events([200], ["x"]))
    assert [r["views"] for r in d.closed.to_dicts()] == [3]  # 70, 85, 90; not the late 30


def test_watermark_waits_for_every_active_partition() -> None:
    state = WindowState(declaration(keel.tumbling("1m")))
    early = events([300], ["x"])
    state.update(early, np.array([0]), active={0, 1})
    assert state.watermark_us is None  # partition 1 not seen yet: no watermark, nothing can be late
    out = state.update(events([10], ["x"]), np.array([1]), active={0, 1})
    assert out.late.height == 0
    assert state.watermark_us == int((BASE + timedelta(seconds=10)).timestamp() * 1_000_000)
    # an idle partition (not active) no longer holds the watermark back
    state.update(events([301], ["x"]), np.array([0]), active={0})
    assert state.watermark_us == int((BASE + timedelta(seconds=301)).timestamp() * 1_000_000)
