"""DuckDB SQL to Spark SQL: sqlglot's translation, plus the rewrites where its output would silently differ.

sqlglot (``transpile(read="duckdb", write="spark")``) maps most of DuckDB's dialect onto Spark's, but
two constructs the shop's jobs use come out wrong without a word (measured with sqlglot 30.31):
``list(x ORDER BY y)`` becomes ``COLLECT_LIST(x)``, losing the order (and Spark's collect_list drops
nulls, DuckDB's list keeps them), and the 1-based inclusive slice ``l[1:10]`` is copied verbatim,
which Spark does not parse. keel rewrites both itself:

* ``list(x ORDER BY k1 DESC, k2)`` -> ``TRANSFORM(ARRAY_SORT(COLLECT_LIST(STRUCT(x, k1, k2)), cmp), s -> s.v)``
  with a comparator that orders as DuckDB does (its nulls last by default, sqlglot records it per key);
  over no rows it is NULL, as DuckDB's.
* ``l[a:b]`` with positive integer bounds (either may be left out) -> ``SLICE(l, a, b - a + 1)``.

What cannot be translated faithfully is refused with the construct named (`UntranslatableError`):
what sqlglot itself reports as unsupported, functions sqlglot does not know (it would copy their
names through, and Spark may have none or another meaning), and the forms of the two rewrites above
that keel does not handle (DISTINCT, FILTER or OVER on list, slices with other bounds or a step).
`check_translatable` lists them without raising, for `keel check`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keel.errors import QueryError, UntranslatableError

_CACHE: dict[str, str] = {}


def to_spark(sql: str) -> str:
    """`sql` (DuckDB's dialect) as Spark SQL, or UntranslatableError naming each construct that is not."""
    cached = _CACHE.get(sql)
    if cached is not None:
        return cached
    spark, problems = _translate(sql)
    if problems:
        raise UntranslatableError(problems)
    if len(_CACHE) > 256:
        _CACHE.clear()
    _CACHE[sql] = spark
    return spark


def check_translatable(sql: str) -> list[str]:
    """The constructs of `sql` that keel cannot run on Spark (empty when it can), each named."""
    return _translate(sql)[1]


def _translate(sql: str) -> tuple[str, list[str]]:
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ErrorLevel, ParseError, UnsupportedError

    try:
        statements = sqlglot.parse(sql, read="duckdb")
    except ParseError as exc:
        raise QueryError(f"the query does not parse as DuckDB SQL: {str(exc).splitlines()[0]}") from exc
    found = [s for s in statements if s is not None]
    if len(found) != 1:
        raise QueryError(f"a batch query is one SQL statement; this text holds {len(found)}")
    problems: list[str] = []
    tree = found[0].transform(_rewriter(problems, exp))
    for func in tree.find_all(exp.Anonymous):
        problems.append(f"function {func.name}() (not known to the DuckDB-to-Spark translator)")
    try:
        spark = tree.sql(dialect="spark", unsupported_level=ErrorLevel.RAISE)
    except UnsupportedError as exc:
        problems.extend(line.strip() for line in str(exc).splitlines() if line.strip())
        spark = ""
    return spark, list(dict.fromkeys(problems))


def _rewriter(problems: list[str], exp: Any) -> Callable[[Any], Any]:
    import sqlglot

    def spark_sql(node: Any) -> str:
        return str(node.transform(rewrite).sql(dialect="spark"))

    def rewrite(node: Any) -> Any:
        if isinstance(node, exp.ArrayAgg):
            return _list_agg(node)
        if isinstance(node, exp.Bracket) and node.expressions and isinstance(node.expressions[0], exp.Slice):
            return _slice(node)
        return node

    def _list_agg(node: Any) -> Any:
        inner = node.this
        if isinstance(node.parent, exp.Filter | exp.Window) or isinstance(inner, exp.Distinct):
            form = "DISTINCT" if isinstance(inner, exp.Distinct) else (
                "FILTER" if isinstance(node.parent, exp.Filter) else "OVER")
            problems.append(f"list()/array_agg() with {form} (write it without, e.g. in a subquery)")
            return node
        orders = list(inner.expressions) if isinstance(inner, exp.Order) else []
        value = inner.this if isinstance(inner, exp.Order) else inner
        fields = [f"{spark_sql(value)} AS v"] + [f"{spark_sql(o.this)} AS k{i}" for i, o in enumerate(orders)]
        collected = f"COLLECT_LIST(STRUCT({', '.join(fields)}))"
        if orders:
            collected = f"ARRAY_SORT({collected}, (l, r) -> {_comparator(orders)})"
        # collect_list over no rows is [], DuckDB's list NULL; over some rows (structs, never null) never [].
        text = f"IF(SIZE({collected}) = 0, NULL, TRANSFORM({collected}, s -> s.v))"
        return sqlglot.parse_one(text, read="spark")

    def _slice(node: Any) -> Any:
        bounds = node.expressions[0]
        start, end = bounds.this, bounds.expression
        if len(node.expressions) != 1 or bounds.args.get("step") is not None or isinstance(start, exp.Slice) \
                or not all(b is None or (isinstance(b, exp.Literal) and b.is_int and int(b.this) >= 1)
                           for b in (start, end)):
            problems.append(f"list slice {node.sql(dialect='duckdb')} (keel translates slices whose bounds "
                            "are positive integers, like [1:10], [2:] or [:3])")
            return node
        first = int(start.this) if start is not None else 1
        target = spark_sql(node.this)
        length = str(max(int(end.this) - first + 1, 0)) if end is not None else f"SIZE({target})"
        return sqlglot.parse_one(f"SLICE({target}, {first}, {length})", read="spark")

    return rewrite


def _comparator(orders: list[Any]) -> str:
    """A Spark array_sort comparator of structs (l, r) by fields k0, k1, ... as `orders` sorts."""
    whens = []
    for i, order in enumerate(orders):
        first = -1 if order.args.get("nulls_first") else 1
        less = 1 if order.args.get("desc") else -1
        left, right = f"l.k{i}", f"r.k{i}"
        whens.append(f"WHEN NOT ({left} <=> {right}) THEN CASE WHEN {left} IS NULL THEN {first} "
                     f"WHEN {right} IS NULL THEN {-first} WHEN {left} < {right} THEN {less} ELSE {-less} END")
    return f"CASE {' '.join(whens)} ELSE 0 END"
