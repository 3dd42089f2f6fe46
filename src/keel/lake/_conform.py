"""Checking Arrow data against a lake table's schema, and shaping it to that schema.

Delta Lake stores fewer types than Arrow has: strings are strings whatever their Arrow layout,
timestamps are microseconds (UTC-adjusted or naive), integers are signed. ``canonical_schema``
maps Arrow types onto the ones a table holds, so that a batch built from ``large_string`` or
nanosecond timestamps matches a table created from ``string`` and microseconds.

The evolution rules (``conform``):
* a column the table has and the data lacks is filled with nulls if nullable, refused if required;
* a column the data has and the table lacks is added to the table, always nullable;
* a missing column and a new column of the same type looks like a rename, which old readers cannot
  follow, so it is refused;
* a column whose type differs is cast if the cast is lossless (int32 -> int64, float32 -> float64,
  any string layout -> string, ns -> us timestamps), refused otherwise.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from keel.errors import SchemaError

_UNSIGNED_WIDENED = {8: pa.int16(), 16: pa.int32(), 32: pa.int64(), 64: pa.int64()}


def canonical_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type a Delta table stores for values of Arrow type `t`."""
    if pa.types.is_dictionary(t):
        return canonical_type(t.value_type)
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t):
        return pa.binary()
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz="UTC" if t.tz else None)
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_unsigned_integer(t):
        return _UNSIGNED_WIDENED[t.bit_width]
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        return pa.list_(canonical_field(t.value_field))
    if pa.types.is_struct(t):
        return pa.struct([canonical_field(t.field(i)) for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(canonical_type(t.key_type), canonical_field(t.item_field))
    return t


def canonical_field(f: pa.Field) -> pa.Field:
    return pa.field(f.name, canonical_type(f.type), nullable=f.nullable)


def canonical_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([canonical_field(f) for f in schema])


def _widens(source: pa.DataType, target: pa.DataType) -> bool:
    """True if every value of `source` is exactly representable in `target`."""
    if pa.types.is_signed_integer(source) and pa.types.is_signed_integer(target):
        return bool(source.bit_width <= target.bit_width)
    if pa.types.is_floating(source) and pa.types.is_floating(target):
        return bool(source.bit_width <= target.bit_width)
    return False


def _convert(column: pa.ChunkedArray, field: pa.Field, table: str) -> pa.ChunkedArray:
    source = column.type
    if source == field.type:
        return column
    if canonical_type(source) == field.type or _widens(canonical_type(source), field.type):
        # ns -> us drops sub-microsecond digits, which Delta cannot store anyway.
        lossy_ok = pa.types.is_timestamp(source)
        try:
            return pc.cast(column, field.type, safe=not lossy_ok)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(
                f"table {table!r}: column {field.name!r} holds {source} values that do not fit the "
                f"table's type {field.type} ({exc}); fix the values or the producer's type"
            ) from exc
    raise SchemaError(
        f"table {table!r}: column {field.name!r} is {field.type} in the table but {source} in the data; "
        f"changing a column's type is a breaking change: cast the data to {field.type}, or write the "
        f"new type under a new column name"
    )


def conform(data: pa.Table, target: pa.Schema, table: str) -> tuple[pa.Table, bool]:
    """`data` shaped to the table schema `target` (+ new columns); and whether the schema grows.

    Raises SchemaError naming the column and the fix; `data` is never partially accepted.
    """
    names = data.schema.names
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise SchemaError(f"table {table!r}: the data has duplicate columns {dupes}; give each column one name")
    missing = [f for f in target if f.name not in names]
    new = [data.schema.field(n) for n in names if n not in target.names]
    required = [f for f in missing if not f.nullable]
    if required:
        f = required[0]
        raise SchemaError(
            f"table {table!r}: required column {f.name!r} ({f.type}) is missing from the data; "
            f"add it to every batch (required columns: {[r.name for r in target if not r.nullable]})"
        )
    renamed = [(m, n) for m in missing for n in new if canonical_type(n.type) == m.type]
    if renamed:
        old, now = renamed[0]
        raise SchemaError(
            f"table {table!r}: the data lacks column {old.name!r} and brings a new column {now.name!r} of the "
            f"same type, which looks like a rename; renaming is a breaking change for readers: keep "
            f"{old.name!r} (nulls are fine) next to {now.name!r}, or write a new table"
        )
    columns: list[pa.ChunkedArray] = []
    fields: list[pa.Field] = []
    for field in target:
        if field.name in names:
            column = _convert(data.column(field.name), field, table)
        else:
            column = pa.chunked_array([pa.nulls(data.num_rows, field.type)], type=field.type)
        if not field.nullable and column.null_count:
            raise SchemaError(
                f"table {table!r}: required column {field.name!r} has {column.null_count} null value(s); "
                f"fill them before appending"
            )
        columns.append(column)
        fields.append(field)
    for field in new:
        target_field = pa.field(field.name, canonical_type(field.type), nullable=True)
        columns.append(_convert(data.column(field.name), target_field, table))
        fields.append(target_field)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields)), bool(new)
