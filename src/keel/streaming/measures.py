"""Measures of a windowed aggregation: what `@keel.aggregate` functions return.

    @keel.aggregate(page_views, by="item_id", window=keel.tumbling("5m"), into=[trending])
    def views(w): return {"views": w.count(), "users": w.n_unique("user_id")}

Each measure is mergeable across micro-batches (count, sum, min, max) or computed from kept
state (mean from sum and count; n_unique from the kept set of values).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class Measure:
    op: str  # count | sum | min | max | mean | n_unique
    column: str | None = None

    def partial(self, name: str) -> list[pl.Expr]:
        """Expressions computing this measure's partial state over one batch's group."""
        c = pl.col(self.column) if self.column else None
        if self.op == "count":
            return [pl.len().cast(pl.Int64).alias(name)]
        assert c is not None
        if self.op == "mean":
            return [c.sum().cast(pl.Float64).alias(f"{name}__sum"), c.count().cast(pl.Int64).alias(f"{name}__n")]
        if self.op == "n_unique":
            return [c.unique().implode().alias(f"{name}__set")]
        return [getattr(c, self.op)().alias(name)]

    def merge(self, name: str) -> list[pl.Expr]:
        """Expressions merging partial states of the same group."""
        if self.op in ("count", "sum"):
            return [pl.col(name).sum().alias(name)]
        if self.op in ("min", "max"):
            return [getattr(pl.col(name), self.op)().alias(name)]
        if self.op == "mean":
            return [pl.col(f"{name}__sum").sum(), pl.col(f"{name}__n").sum()]
        return [pl.col(f"{name}__set").explode().unique().implode().alias(f"{name}__set")]

    def final(self, name: str) -> pl.Expr:
        if self.op == "mean":
            return (pl.col(f"{name}__sum") / pl.col(f"{name}__n")).alias(name)
        if self.op == "n_unique":
            return pl.col(f"{name}__set").list.len().cast(pl.Int64).alias(name)
        return pl.col(name)


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
