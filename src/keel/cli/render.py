"""Rows for people, at the terminal's width, never cut to `…`.

A table whose cells wrap when the table is wider than the terminal; when even wrapped cells cannot
fit (many columns, or a word longer than its share), one block per row instead, as psql's expanded
display (`\\x`) does. Values are printed as text, never read as console markup.
"""

from __future__ import annotations

from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.rule import Rule
from rich.table import Table
from rich.text import Text


def cell(value: Any) -> Text:
    return Text("" if value is None else str(value))


def print_rows(rows: list[dict[str, Any]], title: str | None = None, console: Console | None = None,
               empty: str | None = None) -> None:
    """`rows` (dicts with the same keys) as a table, or as one block per row when a table cannot fit;
    `empty` (default "no <title>") when there are none."""
    console = console or Console()
    if not rows:
        console.print(Text(empty or f"no {title or 'rows'}", style="dim"))
        return
    names = list(rows[0])
    cells = [[cell(n) for n in names], *([cell(v) for v in row.values()] for row in rows)]
    widths = _column_widths(cells, console.width)
    if widths is not None:
        table = Table(title=title, min_width=min(len(title or ""), console.width))
        for header, width in zip(cells[0], widths):
            table.add_column(header, overflow="fold", width=width)
        for row_cells in cells[1:]:
            table.add_row(*row_cells)
        console.print(table)
        return
    for number, row in enumerate(rows, 1):
        console.print(Rule(Text(f"{title or 'row'} {number}"), align="left"))
        block = Table.grid(padding=(0, 2))
        block.add_column(style="bold", overflow="fold", max_width=max(10, console.width // 3))
        block.add_column(overflow="fold")
        for name, value in row.items():
            block.add_row(cell(name), cell(value))
        console.print(block)


def _column_widths(cells: list[list[Text]], width: int) -> list[int] | None:
    """Each column's width (without padding) so that the table fits `width` with no word cut: at least
    its longest word, and the room left shared so that as many columns as can be are shown unwrapped;
    None when even the longest words do not fit side by side."""
    frame = 3 * len(cells[0]) + 1  # a border and two spaces of padding per column, and the last border
    columns = list(zip(*cells))
    longest_word = [max(cell_len(w) for c in column for w in [*c.plain.split(), ""]) for column in columns]
    whole = [max(cell_len(line) for c in column for line in [*c.plain.splitlines(), ""]) for column in columns]
    room = width - frame - sum(longest_word)
    if room < 0:
        return None
    wanted = [w - m for w, m in zip(whole, longest_word)]
    widths = list(longest_word)
    # the room goes first to the columns that want little (they fit whole), the rest in equal shares
    by_need = sorted(range(len(wanted)), key=wanted.__getitem__)
    for left, i in zip(range(len(by_need), 0, -1), by_need):
        extra = min(wanted[i], room // left)
        widths[i] += extra
        room -= extra
    return widths
