"""An experiment's report, computed from the lake: exposures joined with each metric per unit.

A unit counts from its first exposure; its outcome is the metric over the metric table's rows at
or after that moment (conversion: 1 if any row, else 0; sum: the sum of `value`, 0 if none).
A unit exposed to more than one variant is left out and counted (it would bias both arms).
"""

from __future__ import annotations

from keel.errors import NotFoundError
from keel.experiments.analysis import ExperimentResult, analyze
from keel.project.exposures import EXPOSURES
from keel.lake.sql import SqlSession
from keel.project.catalog import Catalog
from keel.project.declare import Experiment, Metric


def outcomes_sql(exp: Experiment, metric: Metric) -> str:
    outcome = "max(case when m.{u} is null then 0.0 else 1.0 end)" if metric.aggregate == "conversion" else \
        "coalesce(sum(m.{v}), 0.0)"
    outcome = outcome.format(u=metric.unit, v=metric.value)
    name = exp.name.replace("'", "''")
    return f"""
        with first as (
            select unit, min(variant) as variant, count(distinct variant) as variants, min(event_time) as since
            from {EXPOSURES} where experiment = '{name}' group by unit
        )
        select f.unit, f.variant, {outcome} as value
        from first f left join {metric.table} m on m.{metric.unit} = f.unit and m.event_time >= f.since
        where f.variants = 1
        group by f.unit, f.variant
    """


def experiment_report(session: SqlSession, catalog: Catalog, name: str) -> dict[str, ExperimentResult]:
    """metric name -> result of the treatment(s) against the control, from the lake tables `session` reads."""
    exp = catalog.experiments.get(name)
    if exp is None:
        raise NotFoundError(f"no experiment {name!r}; experiments: {sorted(catalog.experiments) or 'none'}")
    results = {}
    for metric_name in exp.metrics:
        metric = catalog.metrics[metric_name]
        table = session.query(outcomes_sql(exp, metric))
        treatment = next(v for v in exp.variants if v != exp.control)
        results[metric_name] = analyze(table, control=exp.control, treatment=treatment, weights=exp.variants)
    return results
