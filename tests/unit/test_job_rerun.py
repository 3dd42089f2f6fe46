"""Re-running a job for a date recomputes it (`keel run JOB --date D`); retries stay exactly-once.

The runs go through the embedded scheduler with the tasks `keel run` builds (`scheduler_tasks`),
on a real Delta lake; the scheduler's sleep is injected so retries do not wait.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest

import keel
from keel.bus import open_bus
from keel.jobs.run import LocalJobEngines
from keel.project.catalog import Catalog, collecting
from keel.errors import BackendError, ConflictError
from keel.jobs.embedded import EmbeddedScheduler
from keel.jobs.run import run_job, scheduler_tasks
from keel.kv import open_kv
from keel.kv.views import Views
from keel.lake import open_lake

DAY = datetime(2024, 5, 1, 3, tzinfo=UTC)
NEXT_DAY = datetime(2024, 5, 2, 3, tzinfo=UTC)
ORDERS = pa.schema([("user_id", pa.string()), ("amount", pa.int64())])


def declare() -> Catalog:
    with collecting() as catalog:
        keel.table("orders")

        @keel.job(schedule="0 3 * * *", inputs=["orders"], output=keel.table("revenue"))
        def revenue(ctx):  # type: ignore[no-untyped-def]
            return "select user_id, sum(amount) as total from orders group by user_id order by user_id"
    return catalog


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Any]:
    lake = open_lake(f"file://{tmp_path}/lake")
    lake.create_table("orders", ORDERS)
    bus, kv = open_bus(f"file://{tmp_path}/bus"), open_kv(f"file://{tmp_path}/kv.db")
    engines = LocalJobEngines(lake=lake, views=Views(kv, {}))
    catalog = declare()
    with EmbeddedScheduler(tmp_path / "scheduler.db", scheduler_tasks(catalog, engines),
                           sleep=lambda s: None) as scheduler:
        yield SimpleNamespace(engines=engines, catalog=catalog, lake=lake, scheduler=scheduler)
    kv.close()
    bus.close()


def put_orders(lake: Any, rows: list[tuple[str, int]]) -> None:
    lake.overwrite("orders", pa.table({"user_id": [u for u, _ in rows], "amount": [a for _, a in rows]},
                                      schema=ORDERS))


def revenue(lake: Any) -> list[tuple[str, int]]:
    return sorted((r["user_id"], r["total"]) for r in lake.read("revenue").to_pylist())


def test_rerunning_a_date_after_the_input_changed_recomputes_it(shop: Any) -> None:
    put_orders(shop.lake, [("u1", 5), ("u2", 7)])
    assert shop.scheduler.trigger("revenue", DAY).state == "success"
    assert revenue(shop.lake) == [("u1", 5), ("u2", 7)]
    put_orders(shop.lake, [("u1", 5), ("u1", 10), ("u3", 1)])  # late data for the same day
    run = shop.scheduler.trigger("revenue", DAY)
    assert (run.state, run.error) == ("success", None)
    assert revenue(shop.lake) == [("u1", 15), ("u3", 1)]
    put_orders(shop.lake, [("u9", 2)])
    assert shop.scheduler.trigger("revenue", DAY).state == "success"  # and again
    assert revenue(shop.lake) == [("u9", 2)]


def test_a_later_date_replaces_the_table_and_an_older_date_is_refused_not_silently_skipped(shop: Any) -> None:
    put_orders(shop.lake, [("u1", 5)])
    run_job(shop.engines, shop.catalog.jobs["revenue"], NEXT_DAY)
    put_orders(shop.lake, [("u1", 99)])
    with pytest.raises(ConflictError, match=r"revenue.*holds the job's result for 2024-05-02.*later date"):
        run_job(shop.engines, shop.catalog.jobs["revenue"], DAY)
    assert revenue(shop.lake) == [("u1", 5)]


class LostReply:
    """A lake whose first overwrite of `table` commits and then fails, as when the object store's
    reply to a commit is lost: the caller cannot tell whether it landed."""

    def __init__(self, lake: Any, table: str) -> None:
        self._lake, self._table, self.failed = lake, table, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lake, name)

    def overwrite(self, name: str, data: Any, **kwargs: Any) -> bool:
        landed: bool = self._lake.overwrite(name, data, **kwargs)
        if name == self._table and not self.failed:
            self.failed = True
            raise BackendError("the lake file:// failed: connection reset")
        return landed


def test_a_retry_after_a_commit_whose_reply_was_lost_leaves_the_table_as_one_run_would(shop: Any,
                                                                                      tmp_path: Path) -> None:
    put_orders(shop.lake, [("u1", 5), ("u2", 7)])
    flaky = LostReply(shop.lake, "revenue")
    engines = dataclasses.replace(shop.engines, lake=flaky)
    with EmbeddedScheduler(tmp_path / "retry.db", scheduler_tasks(shop.catalog, engines),
                           sleep=lambda s: None) as scheduler:
        run = scheduler.trigger("revenue", DAY)
    assert flaky.failed and (run.state, run.attempts) == ("success", 2)
    assert revenue(shop.lake) == [("u1", 5), ("u2", 7)]  # the whole table once, no duplicated rows
    assert shop.lake.describe("revenue").rows == 2
