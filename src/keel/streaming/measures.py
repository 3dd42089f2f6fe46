"""How the stream processors compute an aggregation's measures (`keel.project.measures`) with Polars.

Each measure is mergeable across micro-batches (count, sum, min, max) or computed from kept
state (mean from sum and count; n_unique from the kept set of values).
"""

from __future__ import annotations

import polars as pl

from keel.project.measures import Measure

__all__ = ["Measure", "final_expr", "merge_exprs", "partial_exprs"]


def partial_exprs(m: Measure, name: str) -> list[pl.Expr]:
    """Expressions computing the measure's partial state over one batch's group."""
    c = pl.col(m.column) if m.column else None
    if m.op == "count":
        return [pl.len().cast(pl.Int64).alias(name)]
    assert c is not None
    if m.op == "mean":
        return [c.sum().cast(pl.Float64).alias(f"{name}__sum"), c.count().cast(pl.Int64).alias(f"{name}__n")]
    if m.op == "n_unique":
        return [c.unique().implode().alias(f"{name}__set")]
    return [getattr(c, m.op)().alias(name)]


def merge_exprs(m: Measure, name: str) -> list[pl.Expr]:
    """Expressions merging partial states of the same group."""
    if m.op in ("count", "sum"):
        return [pl.col(name).sum().alias(name)]
    if m.op in ("min", "max"):
        return [getattr(pl.col(name), m.op)().alias(name)]
    if m.op == "mean":
        return [pl.col(f"{name}__sum").sum(), pl.col(f"{name}__n").sum()]
    return [pl.col(f"{name}__set").explode().unique().implode().alias(f"{name}__set")]


def final_expr(m: Measure, name: str) -> pl.Expr:
    """The expression turning a merged partial state into the measure's value."""
    if m.op == "mean":
        return (pl.col(f"{name}__sum") / pl.col(f"{name}__n")).alias(name)
    if m.op == "n_unique":
        return pl.col(f"{name}__set").list.len().cast(pl.Int64).alias(name)
    return pl.col(name)
