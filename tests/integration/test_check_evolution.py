"""`keel check` refuses breaking schema changes against the tables the lake holds and the events on
the bus, naming the field and the fix; new optional fields pass; a fresh project creates nothing.

The existing table is written with a hand-written Arrow schema (what a landing of the old
declaration holds), not derived from the code under test.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from keel.bus import open_bus
from keel.bus.base import StreamConfig
from keel.run.deployed import deployed_problems
from keel.lake import open_lake
from keel.project.loading import load_project

OLD_TABLE = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("price", pa.int64()),
    pa.field("event_date", pa.date32(), nullable=False),
])

OLD_FIELDS = "user_id: str\n        item_id: str\n        price: int | None = None"


def project(root: Path, fields: str, version: int = 1) -> Path:
    (root / "proj").mkdir(parents=True, exist_ok=True)
    (root / "keel.toml").write_text('[project]\nname = "t"\nmodule = "proj.decl"\n')
    (root / "proj" / "__init__.py").write_text("")
    (root / "proj" / "decl.py").write_text(textwrap.dedent(f'''
    import keel

    class PageView(keel.Event):
        schema_version = {version}
        {fields}

    page_views = keel.stream("page_views", PageView, key="user_id")
    keel.land(page_views, keel.table("page_views"))
    '''))
    return root


def deployed(root: Path) -> Path:
    lake = open_lake(f"file://{root}/.keel/lake")
    lake.create_table("page_views", OLD_TABLE)
    return root


def problems(root: Path) -> list[str]:
    p = load_project(root)
    return [str(x) for x in deployed_problems(p.catalog, p.config.lake, p.config.bus)]


@pytest.mark.parametrize(("fields", "expected"), [
    ("user_id: str\n        price: int | None = None",
     r"removes required field 'item_id'.*keep 'item_id'; to stop sending it make it optional"),
    ("user_id: str\n        item_id: str\n        price: str | None = None",
     r"changes field 'price' from int64 to string.*add a new optional field with the new type instead"),
    ("user_id: str\n        item_id: str\n        price: int",
     r"makes field 'price' required.*keep it optional"),
    ("user_id: str\n        item_id: str\n        country: str\n        price: int | None = None",
     r"adds required field 'country'.*make it optional"),
], ids=["removed-required", "type-change", "optional-to-required", "new-required"])
def test_a_breaking_change_is_refused_naming_the_field_and_the_fix(tmp_path: Path, fields: str,
                                                                    expected: str) -> None:
    root = deployed(project(tmp_path, fields))
    found = problems(root)
    assert len(found) == 1, found
    assert "decl.py:" in found[0] and "land_page_views" in found[0]
    assert re.search(expected, found[0]), found[0]


def test_new_optional_fields_and_dropping_an_optional_one_pass(tmp_path: Path) -> None:
    fields = OLD_FIELDS + "\n        country: str | None = None\n        tags: list[str] | None = None"
    assert problems(deployed(project(tmp_path, fields))) == []
    assert problems(project(tmp_path, "user_id: str\n        item_id: str")) == []  # price dropped


def test_a_fresh_project_is_checked_without_creating_anything(tmp_path: Path) -> None:
    root = project(tmp_path, OLD_FIELDS)
    assert problems(root) == []
    assert not (root / ".keel").exists()


def test_a_declaration_older_than_the_events_on_the_bus_is_refused(tmp_path: Path) -> None:
    root = project(tmp_path, OLD_FIELDS, version=1)
    bus = open_bus(f"file://{root}/.keel/bus")
    bus.create_stream(StreamConfig("page_views", 2))
    headers = pa.array([[("event_id", b"e1"), ("schema_version", b"3")]], pa.map_(pa.string(), pa.binary()))
    bus.produce("page_views", pa.table({"key": [b"u1"], "value": [b'{"user_id": "u1", "item_id": "i"}'],
                                        "headers": headers}))
    bus.close()
    (problem,) = problems(root)
    assert "PageView.schema_version = 1" in problem and "schema_version 3" in problem
    project(tmp_path, OLD_FIELDS, version=3)
    for module in [m for m in sys.modules if m == "proj" or m.startswith("proj.")]:
        del sys.modules[module]
    assert problems(root) == []


def test_keel_check_prints_the_breaking_change_and_exits_1(tmp_path: Path) -> None:
    root = deployed(project(tmp_path, "user_id: str\n        price: int | None = None"))
    done = subprocess.run([sys.executable, "-m", "keel.cli.commands", "check", "-p", str(root)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "removes required field 'item_id'" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_tables_written_by_the_real_landing_and_aggregation_pass_unchanged(tmp_path: Path) -> None:
    import keel
    from keel.project.catalog import collecting
    from keel.streaming.runner import Runner
    from tests.unit.test_stream_runner import Click, drain, engines, produce

    with collecting() as catalog:
        clicks = keel.stream("clicks", Click, key="user_id", partitions=2)
        land = keel.land(clicks, keel.table("clicks"))

        @keel.aggregate(clicks, by="item_id", window=keel.tumbling("1m"), into=[keel.table("counts_1m")])
        def counts(w):  # type: ignore[no-untyped-def]
            return {"views": w.count()}
    rt = engines(tmp_path, [])
    rt.bus.create_stream(StreamConfig("clicks", 2))
    produce(rt, "clicks", [(f"u{i % 3}", f"i{i % 2}", i * 10.0) for i in range(40)])
    for decl in (land, counts):
        runner = Runner(decl, rt)
        runner.start()
        drain(runner, 40)
        runner.consumer.close()
    rt.bus.close()
    assert {"clicks", "counts_1m"} <= set(rt.lake.list_tables())
    assert deployed_problems(catalog, f"file://{tmp_path}/lake", f"file://{tmp_path}/bus") == []


def test_a_stateless_processor_whose_output_changes_type_is_refused(tmp_path: Path) -> None:
    root = project(tmp_path, OLD_FIELDS)
    with (root / "proj" / "decl.py").open("a") as decl:
        decl.write(textwrap.dedent('''
        import polars as pl

        @keel.processor(page_views, into=keel.table("prices"))
        def prices(batch):
            return batch.select("user_id", pl.col("price").cast(pl.Utf8).alias("price"))
        '''))
    lake = open_lake(f"file://{root}/.keel/lake")
    lake.create_table("prices", pa.schema([("user_id", pa.string()), ("price", pa.int64())]))
    found = problems(root)
    assert len(found) == 1 and "processor 'prices'" in found[0], found
    assert "changes field 'price' from int64 to string" in found[0]
