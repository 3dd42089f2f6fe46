"""DuckDB SQL to Spark SQL: the rewrites where sqlglot's output would differ, and constructs refused by name.

That the translated SQL gives DuckDB's results on a real Spark is tests/integration/test_batch_spark.py's job;
these check the text and the refusals without starting Spark.
"""

from __future__ import annotations

import pytest

from keel.batch import check_translatable, to_spark
from keel.errors import QueryError, UntranslatableError


def test_an_ordered_list_keeps_its_order_and_its_nulls() -> None:
    spark = to_spark("select k, list(v order by n desc, v) as l from t group by k")
    assert "COLLECT_LIST(STRUCT(v AS v, n AS k0, v AS k1))" in spark  # structs: a null v is kept, not dropped
    assert "ARRAY_SORT(" in spark and "(l, r) ->" in spark
    assert "list(" not in spark.lower().replace("collect_list(", "")


def test_a_slice_becomes_slice_with_a_length() -> None:
    assert to_spark("select l[1:10] from t") == "SELECT SLICE(l, 1, 10) FROM t"
    assert to_spark("select l[3:4] from t") == "SELECT SLICE(l, 3, 2) FROM t"
    assert to_spark("select l[:3] from t") == "SELECT SLICE(l, 1, 3) FROM t"
    assert to_spark("select l[2:] from t") == "SELECT SLICE(l, 2, SIZE(l)) FROM t"


def test_plain_sql_passes_through_sqlglot() -> None:
    assert check_translatable("select a, row_number() over (partition by a order by b) as n from t") == []
    assert to_spark("select a::decimal(10, 2) from t") == "SELECT CAST(a AS DECIMAL(10, 2)) FROM t"


@pytest.mark.parametrize("sql,construct", [
    ("select list(v)[-2:] from t", "list slice"),
    ("select l[a:b] from t", "list slice"),
    ("select list(distinct v) from t", "DISTINCT"),
    ("select list(v) filter (where v > 1) from t", "FILTER"),
    ("select list(v) over (partition by k) from t", "OVER"),
    ("select my_udf(v) from t", "my_udf()"),
])
def test_an_untranslatable_construct_is_named(sql: str, construct: str) -> None:
    problems = check_translatable(sql)
    assert len(problems) == 1 and construct in problems[0]
    with pytest.raises(UntranslatableError, match="cannot run on Spark") as raised:
        to_spark(sql)
    assert raised.value.constructs == problems
    assert isinstance(raised.value, QueryError)


def test_each_construct_is_named_once() -> None:
    assert len(check_translatable("select my_udf(a), my_udf(b), l[-1:] from t")) == 2


def test_text_that_is_not_one_statement_is_a_query_error() -> None:
    with pytest.raises(QueryError, match="does not parse"):
        check_translatable("select from where (")
    with pytest.raises(QueryError, match="one SQL statement"):
        to_spark("select 1; select 2")


def test_the_shops_job_sql_translates() -> None:
    from tests.unit.test_batch_duckdb import CO_VIEWS_SQL, SIMILAR_SQL

    for sql in (CO_VIEWS_SQL, SIMILAR_SQL):
        assert check_translatable(sql) == []
