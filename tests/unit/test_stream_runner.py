"""Stream processors on embedded engines: exactly once into the lake across restarts and crashes,
late events to the side table, closed windows equal to a batch recomputation, keyed state,
enrichment from a view, fencing of a stale partition owner."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

import keel
from keel.bus import open_bus
from keel.bus.base import StreamConfig
from keel.engines import Engines
from keel.project.catalog import collecting
from keel.kv import open_kv
from keel.kv.views import Views
from keel.lake import open_lake
from keel.streaming import stateful as stateful_mod
from keel.streaming.runner import Runner
from keel.streaming.stateless import decode, encode, writer_of

BASE = datetime(2024, 1, 1, tzinfo=UTC)


class Click(keel.Event):
    user_id: str
    item_id: str


def engines(root: Path, views: list[str]) -> Engines:
    kv = open_kv(f"file://{root}/kv.db")
    state = root / "state"
    state.mkdir(parents=True, exist_ok=True)
    return Engines(bus=open_bus(f"file://{root}/bus"), lake=open_lake(f"file://{root}/lake"),
                   views=Views(kv, {v: None for v in views}), state_dir=state)


def produce(rt: Engines, stream: str, rows: list[tuple[str, str, float]], start: int = 0) -> list[str]:
    """rows of (user, item, seconds after BASE); returns the event ids."""
    ids = [f"e{start + i}" for i in range(len(rows))]
    values = [json.dumps({"user_id": u, "item_id": it, "ts": (BASE + timedelta(seconds=s)).isoformat()}).encode()
              for u, it, s in rows]
    rt.bus.produce(stream, pa.table({
        "key": pa.array([u.encode() for u, _, _ in rows], pa.binary()),
        "value": pa.array(values, pa.binary()),
        "headers": pa.array([[("event_id", i.encode())] for i in ids], pa.map_(pa.string(), pa.binary()))}))
    return ids


def drain(runner: Runner, until: int) -> None:
    for _ in range(200):
        if runner.stats.events >= until:
            break
        runner.step(timeout=0.05)
    runner.flush()


@pytest.fixture
def shop(tmp_path: Path) -> Any:
    with collecting():
        clicks = keel.stream("clicks", Click, key="user_id", partitions=2)
        landed = keel.table("clicks")
        land = keel.land(clicks, landed)

        @keel.aggregate(clicks, by="item_id", window=keel.tumbling("1m"), lateness="10s",
                        into=[keel.view("counts"), keel.table("counts_1m")])
        def counts(w):  # type: ignore[no-untyped-def]
            return {"views": w.count()}
    rt = engines(tmp_path, ["counts"])
    rt.bus.create_stream(StreamConfig("clicks", 2))
    yield SimpleNamespace(rt=rt, land=land, counts=counts)
    rt.bus.close()
    rt.views.kv.close()


def test_landing_is_exactly_once_across_restarts(shop: Any) -> None:
    ids = produce(shop.rt, "clicks", [(f"u{i % 7}", f"i{i % 3}", i) for i in range(300)])
    first = Runner(shop.land, shop.rt, max_records=50)
    first.start()
    for _ in range(3):
        first.step(timeout=0.05)
    first.consumer.close()  # "crash" after some batches, without any goodbye
    again = Runner(shop.land, shop.rt, max_records=50)
    again.start()
    drain(again, 300 - 150)
    again.consumer.close()
    got = shop.rt.lake.read("clicks", columns=["event_id"]).column("event_id").to_pylist()
    assert sorted(got) == sorted(ids)


def test_closed_windows_equal_batch_recomputation_and_late_events_go_to_the_side_table(shop: Any) -> None:
    rows = [(f"u{i % 5}", f"i{i % 4}", i * 1.5) for i in range(400)]  # 0..600 s, in order
    rows += [("u1", "i1", 5.0), ("u2", "i2", 595.0)]  # far too late; within lateness of the open window
    produce(shop.rt, "clicks", rows)
    runner = Runner(shop.counts, shop.rt, max_records=60)
    runner.start()
    drain(runner, len(rows))
    runner.consumer.close()
    lake = shop.rt.lake
    late = lake.read("counts_late").to_pylist()
    assert [(r["item_id"], r["event_time"]) for r in late] == [("i1", BASE + timedelta(seconds=5))]
    closed = pl.from_arrow(lake.read("counts_1m"))
    on_time = pl.DataFrame({"item_id": [r[1] for r in rows[:-2]] + ["i2"],
                            "s": [r[2] for r in rows[:-2]] + [595.0]})
    expected = on_time.group_by((pl.col("s") // 60).cast(pl.Int64).alias("w"), "item_id").agg(pl.len().alias("views"))
    got = closed.select(((pl.col("window_start").dt.epoch("s") - int(BASE.timestamp())) // 60).alias("w"), "item_id",
                        "views")
    wm_window = (599 - 10) // 60  # windows ending at or before the watermark (589 s) are closed
    expected = expected.filter(pl.col("w") < wm_window)
    assert got.sort("w", "item_id").to_dicts() == expected.sort("w", "item_id").to_dicts()
    # the view holds each item's newest window; a closed one outranks its running values
    value = shop.rt.views.get("counts", "i2")
    assert value["window_start"].startswith("2024-01-01T00:09:00")


def test_a_crash_between_the_lake_commit_and_the_checkpoint_neither_loses_nor_duplicates(
        shop: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [(f"u{i % 5}", f"i{i % 4}", i * 2.0) for i in range(300)]
    produce(shop.rt, "clicks", rows)
    runner = Runner(shop.counts, shop.rt, max_records=100)
    runner.start()
    real = stateful_mod.point_to_unit
    calls = {"n": 0}

    def dying(*args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed after the lake commit, before the checkpoint")
        real(*args)

    monkeypatch.setattr(stateful_mod, "point_to_unit", dying)
    with pytest.raises(RuntimeError):
        for _ in range(10):
            runner.step(timeout=0.05)
            runner.flush()
    runner.consumer.close()
    monkeypatch.setattr(stateful_mod, "point_to_unit", real)
    again = Runner(shop.counts, shop.rt, max_records=100)
    again.start()
    drain(again, 300 - (again.engine.offsets and sum(again.engine.offsets.values())))
    for _ in range(5):
        again.step(timeout=0.05)
    again.flush()
    again.consumer.close()
    closed = pl.from_arrow(shop.rt.lake.read("counts_1m"))
    assert closed.group_by("window_start", "item_id").len().get_column("len").max() == 1  # no duplicate window
    full = closed.filter(pl.col("window_start") < BASE + timedelta(minutes=9))
    assert full.get_column("views").sum() == 9 * 30  # every event of the closed windows, once


def test_keyed_state_survives_a_restart(tmp_path: Path) -> None:
    with collecting():
        clicks = keel.stream("clicks", Click, key="user_id")
        totals_view = keel.view("totals")

        @keel.stateful(clicks, key="user_id", into=[totals_view, keel.table("totals")])
        def totals(batch, state):  # type: ignore[no-untyped-def]
            seen = batch.group_by("user_id").agg(pl.len().alias("n"))
            old = state.get(seen.get_column("user_id"), schema={"n": pl.Int64})
            new = seen.join(old, on="user_id", how="left", suffix="_old").select(
                "user_id", (pl.col("n") + pl.col("n_old").fill_null(0)).alias("n"))
            state.put(new)
            return new
    rt = engines(tmp_path, ["totals"])
    rt.bus.create_stream(StreamConfig("clicks", 1))
    produce(rt, "clicks", [(f"u{i % 3}", "x", i) for i in range(30)])
    runner = Runner(totals, rt, max_records=10)
    runner.start()
    drain(runner, 30)
    runner.consumer.close()
    produce(rt, "clicks", [(f"u{i % 3}", "x", i) for i in range(30, 60)], start=30)
    again = Runner(totals, rt, max_records=10)
    again.start()
    drain(again, 30)
    again.consumer.close()
    assert {k: rt.views.get("totals", k)["n"] for k in ("u0", "u1", "u2")} == {"u0": 20, "u1": 20, "u2": 20}
    rt.bus.close()
    rt.views.kv.close()


def test_enrichment_from_a_view(tmp_path: Path) -> None:
    with collecting():
        clicks = keel.stream("clicks", Click, key="user_id")
        items = keel.view("items")

        @keel.processor(clicks, into=keel.table("priced"), enrich=[keel.lookup(items, on="item_id", prefix="item_")])
        def priced(batch):  # type: ignore[no-untyped-def]
            return batch.select("event_id", "item_id", "item_price")
    rt = engines(tmp_path, ["items"])
    rt.views.put("items", [("a", {"price": 2.5, "name": "apple"}), ("b", {"price": 4.0, "name": "bread"})])
    rt.bus.create_stream(StreamConfig("clicks", 1))
    produce(rt, "clicks", [("u", "a", 1), ("u", "b", 2), ("u", "zz", 3)])
    runner = Runner(priced, rt)
    runner.start()
    drain(runner, 3)
    runner.consumer.close()
    got = pl.from_arrow(rt.lake.read("priced")).sort("event_id")
    assert got.get_column("item_price").to_list() == [2.5, 4.0, None]
    rt.bus.close()
    rt.views.kv.close()


def test_a_fenced_member_cannot_commit_and_the_new_owner_starts_after_its_last_commit(shop: Any) -> None:
    lake = shop.rt.lake
    produce(shop.rt, "clicks", [("u1", "i", i) for i in range(40)])  # u1: one partition
    zombie = Runner(shop.land, shop.rt, max_records=10)
    zombie.start()
    zombie.step(timeout=0.05)
    (p,) = [p for p, o in zombie.engine.owned.items() if o.position["clicks"] > 0]
    old_epoch = zombie.engine.owned[p].epoch["clicks"]
    # the new owner fences the partition (as after a rebalance); the zombie keeps going
    from keel.streaming.base import Tally
    from keel.streaming.deadletters import DeadLetters
    from keel.streaming.stateless import StatelessEngine

    engine = StatelessEngine(shop.land, shop.rt, DeadLetters(shop.rt.bus, shop.land.name, "clicks", Tally()))
    engine.created = True
    epoch, position = engine._fence("clicks", writer_of("land_clicks", p))
    assert epoch == old_epoch + 1 and position == 10
    before = lake.describe("clicks").rows
    assert not lake.append("clicks", lake.read("clicks").slice(0, 1), writer=writer_of("land_clicks", p),
                           version=encode(old_epoch, 20))  # the zombie's next commit is a no-op
    assert lake.describe("clicks").rows == before
    zombie.step(timeout=0.05)  # it notices, reacquires the partition and reseeks
    assert decode(lake.writer_commit("clicks", writer_of("land_clicks", p)).version)[0] >= epoch
    zombie.consumer.close()
    again = Runner(shop.land, shop.rt, max_records=100)
    again.start()
    drain(again, 30)
    again.consumer.close()
    got = lake.read("clicks", columns=["event_id"]).column("event_id").to_pylist()
    assert sorted(got) == sorted(f"e{i}" for i in range(40))


def test_replay_rebuilds_a_table_without_duplicates_and_moves_the_position(shop: Any) -> None:
    from keel.streaming.replay import replay

    ids = produce(shop.rt, "clicks", [(f"u{i % 7}", "i", i) for i in range(120)])
    runner = Runner(shop.land, shop.rt, max_records=50)
    runner.start()
    drain(runner, 120)
    runner.consumer.close()
    shop.rt.lake.delete("clicks", "event_id < 'e5'")  # damage the table
    result = replay(shop.land, shop.rt, from_offset=0)
    assert result.records == 120
    got = shop.rt.lake.read("clicks", columns=["event_id"]).column("event_id").to_pylist()
    assert sorted(got) == sorted(ids)
    more = produce(shop.rt, "clicks", [("u1", "i", 500)], start=1000)
    again = Runner(shop.land, shop.rt)
    again.start()
    drain(again, 1)
    again.consumer.close()
    got = shop.rt.lake.read("clicks", columns=["event_id"]).column("event_id").to_pylist()
    assert sorted(got) == sorted(ids + more)


def test_processor_metrics_are_exported(shop: Any) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from keel.monitor.streams import stream_collector, stream_registry

    def events() -> float:
        return stream_registry().get_sample_value("keel_stream_events_total", {"processor": "land_clicks"}) or 0.0

    before = events()  # the registry is process-wide: other tests ran this processor too
    produce(shop.rt, "clicks", [("u1", "i", i) for i in range(25)])
    runner = Runner(shop.land, shop.rt)
    runner.start()
    drain(runner, 25)
    runner._observe_lag(force=True)
    runner.consumer.close()
    gateway = CollectorRegistry()  # as the gateway would include them in its /metrics
    gateway.register(stream_collector())
    text = generate_latest(gateway).decode()
    assert events() - before == 25
    assert 'keel_stream_events_total{processor="land_clicks"}' in text
    assert 'keel_stream_consumer_lag{processor="land_clicks"} 0.0' in text


def test_views_of_a_unit_of_many_batches_show_the_newest_counts_and_the_true_top(tmp_path: Path) -> None:
    """Several micro-batches per committed unit: each key's view shows its latest running count, and
    `_top` ranks every key of the latest window, including keys the last batches did not touch."""
    with collecting():
        clicks = keel.stream("clicks", Click, key="user_id")

        @keel.aggregate(clicks, by="item_id", window=keel.tumbling("1h"), top=2,
                        into=[keel.view("counts"), keel.table("counts_1h")])
        def counts(w):  # type: ignore[no-untyped-def]
            return {"views": w.count()}
    rt = engines(tmp_path, ["counts"])
    rt.bus.create_stream(StreamConfig("clicks", 1))
    # item a: 5 views early on; b: 3; c: 1 + 1 later; only c and b appear in the later batches
    batches = [[("u", "a", 1.0)] * 5, [("u", "b", 2.0)] * 2, [("u", "c", 3.0)], [("u", "b", 4.0), ("u", "c", 5.0)]]
    start = 0
    for rows in batches:
        produce(rt, "clicks", rows, start)
        start += len(rows)
    runner = Runner(counts, rt, max_records=3)  # several batches before the unit is committed
    runner.engine.min_commit_seconds = 3600
    runner.engine.last_commit = float("inf")
    runner.start()
    drain(runner, start)
    assert runner.stats.batches > 1
    assert {k: rt.views.get("counts", k)["views"] for k in "abc"} == {"a": 5, "b": 3, "c": 2}
    top = rt.views.get("counts", "_top")["items"]
    assert top == [{"item_id": "a", "views": 5}, {"item_id": "b", "views": 3}]
    rt.bus.close()
    rt.views.kv.close()


def test_a_stateful_processor_runs_as_one_instance_and_a_killed_one_frees_its_claim(shop: Any) -> None:
    """A second process running the same aggregation is refused at start (its checkpoints and the
    first's would overwrite each other and its windows would land twice); kill -9 frees the claim."""
    import signal
    import subprocess
    import sys

    from keel.errors import ConflictError
    from keel.streaming.checkpoint import release

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from keel.streaming.checkpoint import claim; "
         "claim(sys.argv[1], 'counts'); print('held', flush=True); time.sleep(60)", str(shop.rt.state_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ConflictError, match=rf"already running in another process \(pid {holder.pid}\)"):
            Runner(shop.counts, shop.rt).start()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    produce(shop.rt, "clicks", [("u1", "a", 1.0)])
    runner = Runner(shop.counts, shop.rt)
    runner.start()  # the killed holder's claim went with it
    drain(runner, 1)
    assert runner.stats.events == 1
    release(shop.rt.state_dir, "counts")
