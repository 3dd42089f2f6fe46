"""Measures of a windowed aggregation: what `@keel.aggregate` functions return.

    @keel.aggregate(page_views, by="item_id", window=keel.tumbling("5m"), into=[trending])
    def views(w): return {"views": w.count(), "users": w.n_unique("user_id")}

A measure is plain data (an op and the column it reads); how an engine computes it over
micro-batches is the engine's business (`keel.streaming.measures` for the stream processors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MeasureOp = Literal["count", "sum", "min", "max", "mean", "n_unique"]


@dataclass(frozen=True)
class Measure:
    op: MeasureOp
    column: str | None = None


class Agg:
    """The builder handed to an aggregation function."""

    def count(self) -> Measure:
        return Measure("count")

    def sum(self, column: str) -> Measure:
        return Measure("sum", column)

    def min(self, column: str) -> Measure:
        return Measure("min", column)

    def max(self, column: str) -> Measure:
        return Measure("max", column)

    def mean(self, column: str) -> Measure:
        return Measure("mean", column)

    def n_unique(self, column: str) -> Measure:
        return Measure("n_unique", column)
