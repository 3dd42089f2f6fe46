"""SQL filters over a table's pyarrow dataset, evaluated by DuckDB.

DuckDB turns the filter and the column list into a pyarrow scan with a pushed-down expression,
so partition folders that cannot match are never opened and Parquet row groups are skipped by
their statistics. The result is cast back to the table's own Arrow types.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.dataset as pads

from keel.errors import NotFoundError, QueryError

_SCAN = "__keel_scan"
_UNKNOWN_COLUMN = re.compile(r'column "?([^"\s]+)"? not found|No field named "?([^"\s.]+)', re.IGNORECASE)


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def columns_error(table: str, known: list[str], message: str, expression: str) -> NotFoundError:
    match = _UNKNOWN_COLUMN.search(message)
    column = next((g for g in match.groups() if g), "?") if match else "?"
    return NotFoundError(f"table {table!r} has no column {column!r} (in {expression!r}); "
                         f"columns: {', '.join(known)}")


def filtered(dataset: pads.Dataset, table: str, columns: list[str] | None, condition: str) -> pa.Table:
    """Rows of `dataset` where the SQL boolean expression `condition` holds, `columns` only."""
    import duckdb

    selected = ", ".join(quote(c) for c in columns) if columns else "*"
    con = duckdb.connect()
    try:
        con.register(_SCAN, dataset)
        result = con.sql(f"SELECT {selected} FROM {_SCAN} WHERE {condition}").to_arrow_table()
    except duckdb.BinderException as exc:
        if _UNKNOWN_COLUMN.search(str(exc)):
            raise columns_error(table, dataset.schema.names, str(exc), condition) from exc
        raise QueryError(f"filter {condition!r} on table {table!r} is not valid: {str(exc).splitlines()[0]}") from exc
    except duckdb.Error as exc:
        raise QueryError(f"filter {condition!r} on table {table!r} is not valid: {str(exc).splitlines()[0]}") from exc
    finally:
        con.close()
    wanted = pa.schema([dataset.schema.field(n) for n in result.column_names])
    return result.cast(wanted)
