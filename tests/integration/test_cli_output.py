"""What a person reads from `keel` at 80 columns: nothing cut to `…`, no line past 80 characters,
empty results said in words, help without type noise, and the documented exit codes (0 done,
1 keel could not do it, 2 the command line is wrong)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pytest
from rich.console import Console

from keel.cli.render import print_rows
from keel.bus.base import HEADERS_TYPE, dlq_name
from keel.run.runtime import Runtime
from keel.serve.ingest import parse_events, to_batch

WIDTH = 80
COMMANDS = [["init"], ["check"], ["up"], ["demo"], ["status"], ["sql"], ["tables"], ["run"], ["streams"],
            ["tail"], ["dlq"], ["replay"], ["lake"], ["lake", "maintain"], ["experiments"],
            ["experiments", "report"], ["keys"], ["keys", "create"], ["keys", "list"], ["keys", "revoke"]]


def keel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keel.cli.commands", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": str(WIDTH), **(env or {})}, timeout=120)


def assert_fits(text: str) -> None:
    assert text.strip(), "printed nothing"
    assert "…" not in text, text
    too_long = [line for line in text.splitlines() if len(line) > WIDTH]
    assert not too_long, "\n".join(too_long)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-output") / "shop"
    assert keel("init", str(root)).returncode == 0
    rt = Runtime.open(root)
    rt.ensure()
    schema = rt.stream("page_views").schema
    events = parse_events(schema, b'[{"user_id":"u1","item_id":"i1"}]', ndjson=False)
    rt.bus.produce("page_views", to_batch(events, "user_id", 1)[0])
    wide = pa.table({"a_rather_long_column_name": ["a value of some length, with words"] * 3,
                     "another_long_column_name": ["more words here and there"] * 3,
                     "third_descriptive_column": [12345678901234, 2, 3],
                     "fourth_descriptive_column": ["2026-12-01T00:00:00+00:00"] * 3})
    rt.lake.create_table("a_table_with_a_long_descriptive_name", wide.schema)
    rt.lake.append("a_table_with_a_long_descriptive_name", wide)
    rt.close()
    for name in ("the-checkout-service", "the-recommendations-frontend"):
        r = keel("keys", "create", name, "-s", "ingest:page_views", "-s", "ingest:purchases", "-s", "read:*",
                 "-s", "call:recommend", "-p", str(root))
        assert r.returncode == 0, r.stderr
    return root


def test_tables_fit_80_columns_without_cutting_cells(shop: Path) -> None:
    r = keel("tables", "-p", str(shop))
    assert r.returncode == 0, r.stderr
    assert_fits(r.stdout)
    assert "a_table_with_a_long_descriptive_name" in r.stdout


def test_keys_list_fits_80_columns_without_cutting_cells(shop: Path) -> None:
    r = keel("keys", "list", "-p", str(shop))
    assert r.returncode == 0, r.stderr
    assert_fits(r.stdout)
    assert "the-recommendations-frontend" in r.stdout and "ingest:purchases" in r.stdout


def test_a_wide_sql_result_shows_every_value_whole(shop: Path) -> None:
    r = keel("sql", "select * from a_table_with_a_long_descriptive_name", "-p", str(shop))
    assert r.returncode == 0, r.stderr
    assert_fits(r.stdout)
    for word in ("a_rather_long_column_name", "fourth_descriptive_column", "12345678901234",
                 "2026-12-01T00:00:00+00:00"):
        assert word in r.stdout


def test_a_value_longer_than_the_screen_is_folded_not_cut(shop: Path) -> None:
    r = keel("sql", "select repeat('y', 300) as long_value, 1 as n", "-p", str(shop))
    assert r.returncode == 0, r.stderr
    assert_fits(r.stdout)
    assert r.stdout.count("y") == 300


def test_sql_says_how_many_rows_it_did_not_show_and_how_to_get_them(shop: Path) -> None:
    r = keel("sql", "select range as n from range(1500)", "-p", str(shop))
    assert r.returncode == 0, r.stderr
    assert " 999 " in r.stdout and " 1000 " not in r.stdout
    assert "1,000 of 1,500 rows" in r.stdout and "--limit 0" in r.stdout and "--format csv" in r.stdout
    everything = keel("sql", "select range as n from range(1500)", "--limit", "0", "-p", str(shop))
    assert everything.returncode == 0 and " 1499 " in everything.stdout and "of 1,500" not in everything.stdout
    assert len(keel("sql", "select range as n from range(1500)", "--format", "csv", "-p", str(shop))
               .stdout.splitlines()) == 1501


def test_tail_of_an_empty_stream_says_so(shop: Path) -> None:
    r = keel("tail", "purchases", "-p", str(shop))
    assert r.returncode == 0, r.stderr
    assert "no records in purchases" in " ".join(r.stdout.split())


def test_dlq_of_a_stream_without_dead_letters_says_so(shop: Path) -> None:
    r = keel("dlq", "page_views", "-p", str(shop))
    assert r.returncode == 0, r.stderr
    assert f"no dead letters in {dlq_name('page_views')}" in " ".join(r.stdout.split())


def test_dlq_prints_where_each_dead_letter_came_from_and_why(shop: Path) -> None:
    rt = Runtime.open(shop)
    headers = [("error", b"item_id: expected str, got int"), ("processor", b"land_page_views"),
               ("source_partition", b"1"), ("source_offset", b"41")]
    rt.bus.produce(dlq_name("purchases"), pa.record_batch({
        "key": pa.array([b"u9"], pa.binary()), "value": pa.array([b'{"item_id": 7}'], pa.binary()),
        "headers": pa.array([headers], HEADERS_TYPE)}))
    rt.close()
    r = keel("dlq", "purchases", "-p", str(shop))
    assert r.returncode == 0, r.stderr
    assert_fits(r.stdout)
    assert "partition 1" in r.stdout and "offset 41" in r.stdout
    assert "item_id: expected str, got int" in r.stdout and '"item_id": 7' in r.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_reads_plainly_at_80_columns(command: list[str]) -> None:
    r = keel(*command, "--help")
    assert r.returncode == 0 and "Usage:" in r.stdout, r.stdout + r.stderr
    assert_fits(r.stdout)
    for noise in ("<bool>", "<list[str]>", "<str>", "<int>", "<path>", "{"):
        assert noise not in r.stdout, noise


@pytest.mark.parametrize("args, choices", [
    (["sql", "select 1", "--format", "xml"], ("table", "csv", "json", "parquet")),
    (["dlq", "page_views", "bogus"], ("show", "replay", "purge")),
])
def test_a_bad_choice_is_a_usage_error_naming_the_choices(shop: Path, args: list[str], choices: tuple[str]) -> None:
    r = keel(*args, "-p", str(shop))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and all(c in r.stderr for c in choices), r.stderr


@pytest.mark.parametrize("args", [["nosuchcommand"], ["sql"], ["tail", "page_views", "--last", "many"],
                                  ["run", "compute_co_views", "--date", "yesterday"]])
def test_usage_errors_exit_2(shop: Path, args: list[str]) -> None:
    r = keel(*args, "-p", str(shop))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "Usage:" in r.stderr


def test_a_reader_that_stops_early_is_not_a_bug(shop: Path) -> None:
    # `keel sql ... | head -1`: 100,000 rows are far more than a pipe holds, so keel is still writing
    # when the reader goes away
    proc = subprocess.Popen([sys.executable, "-m", "keel.cli.commands", "sql", "select range as n from range(100000)",
                             "--format", "csv", "-p", str(shop)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "COLUMNS": str(WIDTH)})
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().strip() == b'"n"'
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) != 0
    assert "bug" not in stderr and "Traceback" not in stderr, stderr


def render(rows: Sequence[Mapping[str, object]], title: str) -> str:
    console = Console(width=WIDTH, file=io.StringIO(), color_system=None)
    print_rows([dict(r) for r in rows], title, console)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def test_a_table_that_fits_when_wrapped_wraps_between_words() -> None:
    lag = "land_page_views=0, trending=12, recent_items=3, co_views=0, similar_items=7, item_views=1"
    text = render([{"stream": "page_views", "partitions": 2, "records": 123456, "lag per group": lag,
                    "dead letters": 0}] * 2, "streams")
    assert_fits(text)
    assert "┃ stream" in text  # still a table
    cells = " ".join(line.split("│")[4].strip() for line in text.splitlines() if line.startswith("│"))
    assert " ".join(lag.split()) in cells  # every word whole, in order
    assert cells.count("123456") == 0 and text.count("123456") == 2


def test_a_table_whose_words_cannot_fit_side_by_side_is_shown_one_block_per_row() -> None:
    rows = [{f"column_with_a_long_name_{i}": f"value-{i}-of-row-{r}-that-is-long" for i in range(4)} for r in range(2)]
    text = render(rows, "result")
    assert_fits(text)
    assert "result 1" in text and "result 2" in text
    for r in range(2):
        for i in range(4):
            assert f"value-{i}-of-row-{r}-that-is-long" in text and f"column_with_a_long_name_{i}" in text


def test_a_long_word_keeps_its_width_and_the_wrappable_column_wraps() -> None:
    ident = "checkout-service-key-0123456789abcdef01234567"
    note = "created for the checkout service in the spring; rotate it with the next release of the service"
    text = render([{"id": ident, "note": note, "rate": 1000}], "keys")
    assert_fits(text)
    assert "┃ id" in text and ident in text  # a table, the identifier on one line
    notes = " ".join(line.split("│")[2].strip() for line in text.splitlines() if line.startswith("│"))
    assert notes.split() == note.split()
