"""Analysing an experiment: a treatment against the control, from one outcome per unit.

Input: a table with columns ``unit``, ``variant`` and ``value`` (0/1 for a conversion, any number
for e.g. revenue), one row per unit. Output: an ``ExperimentResult`` with, per variant, units, mean
and standard deviation; the absolute lift with Welch's 95% confidence interval and p-value (for 0/1
outcomes Welch's t-test agrees with the two-proportion z-test as the samples grow); the relative
lift with a delta-method interval; and a sample-ratio-mismatch check of units per variant against
the declared weights. A figure that cannot be computed (no units, one unit, zero variance, a zero
control mean) is None and a note says why: no NaN is ever shown as a number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from keel.errors import ConfigError, SchemaError

SRM_P_THRESHOLD = 0.001  # below this the split of units is judged broken (the usual industry bar)
COLUMNS = ("unit", "variant", "value")


@dataclass(frozen=True)
class VariantSummary:
    name: str
    units: int
    mean: float | None  # None without units
    std: float | None  # sample standard deviation (ddof=1); None with fewer than 2 units


@dataclass(frozen=True)
class SampleRatioCheck:
    """Chi-square goodness of fit of units per variant against the declared weights."""

    observed: dict[str, int]
    expected_share: dict[str, float]
    p_value: float | None
    mismatch: bool  # p_value < SRM_P_THRESHOLD: the assignment or the logging is broken


@dataclass(frozen=True)
class ExperimentResult:
    control: VariantSummary
    treatment: VariantSummary
    absolute_lift: float | None  # treatment mean - control mean
    absolute_lift_ci: tuple[float, float] | None  # Welch
    relative_lift: float | None  # treatment mean / control mean - 1
    relative_lift_ci: tuple[float, float] | None  # delta method
    p_value: float | None  # Welch's t-test, two-sided
    sample_ratio: SampleRatioCheck | None  # None when no weights were given
    confidence: float = 0.95
    notes: tuple[str, ...] = ()

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < 1 - self.confidence

    @property
    def srm(self) -> bool:
        """True when the units per variant do not match the declared weights (the result is suspect)."""
        return self.sample_ratio is not None and self.sample_ratio.mismatch

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values; missing figures are None, explained in ``notes``."""
        out = asdict(self)
        for key in ("absolute_lift_ci", "relative_lift_ci"):
            out[key] = list(out[key]) if out[key] is not None else None
        out["notes"] = list(self.notes)
        out["significant"] = self.significant
        out["srm"] = self.srm
        return out

    def summary_lines(self) -> list[str]:
        pct = f"{self.confidence:.0%}"
        lines = [_variant_line("control", self.control), _variant_line("treatment", self.treatment)]
        lines.append(
            f"absolute lift: {_num(self.absolute_lift, signed=True)}, {pct} CI {_interval(self.absolute_lift_ci)}"
        )
        lines.append(
            f"relative lift: {_num(self.relative_lift, signed=True, percent=True)}, "
            f"{pct} CI {_interval(self.relative_lift_ci, percent=True)}"
        )
        verdict = "n/a" if self.p_value is None else ("significant" if self.significant else "not significant")
        lines.append(f"p-value: {_num(self.p_value)} (Welch's t-test): {verdict} at {pct}")
        check = self.sample_ratio
        if check is not None:
            counts = " / ".join(f"{n}={c:,}" for n, c in check.observed.items())
            shares = " / ".join(f"{s:.0%}" for s in check.expected_share.values())
            flag = "MISMATCH: do not trust this result" if check.mismatch else "ok"
            # two lines: the counts can be long, and one line would wrap mid-figure at 80 columns
            lines.append(f"sample ratio: {counts}, declared {shares}")
            lines.append(f"sample ratio test: p = {_num(check.p_value)}, {flag}")
        lines += [f"note: {n}" for n in self.notes]
        return lines


def analyze(
    outcomes: Any,
    *,
    control: str,
    treatment: str,
    weights: Mapping[str, float] | None = None,
    confidence: float = 0.95,
) -> ExperimentResult:
    """Compare `treatment` with `control` over `outcomes` (an Arrow table/batch or a Polars frame).

    `weights` are the declared variant weights (name -> weight, any scale) for the sample-ratio
    check; every variant in the data must be declared there. Raises ``SchemaError`` for missing
    columns, nulls, non-numeric values, a unit on several rows or an undeclared variant, and
    ``ConfigError`` for a control/treatment/confidence that makes no sense.
    """
    if control == treatment:
        raise ConfigError(f"control and treatment are both {control!r}: compare two different variants")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence {confidence!r} must be between 0 and 1, e.g. 0.95")
    if weights is not None:
        missing = [v for v in (control, treatment) if v not in weights]
        if missing:
            raise ConfigError(f"variant(s) {missing} are not among the declared variants {sorted(weights)}")
    table = _as_table(outcomes)
    counts = _units_per_variant(table)
    if weights is not None:
        undeclared = sorted(set(counts) - set(weights))
        if undeclared:
            raise SchemaError(
                f"outcomes have units in variant(s) {undeclared}, which the experiment does not declare "
                f"(declared: {sorted(weights)}): the exposures and the declaration disagree"
            )
    notes: list[str] = []
    c = _summarize(table, control, counts.get(control, 0), notes)
    t = _summarize(table, treatment, counts.get(treatment, 0), notes)
    absolute, relative = _compare(c, t, confidence, notes)
    srm = _sample_ratio(counts, weights, notes) if weights is not None else None
    return ExperimentResult(
        control=c.summary,
        treatment=t.summary,
        absolute_lift=absolute[0],
        absolute_lift_ci=absolute[1],
        relative_lift=relative[0],
        relative_lift_ci=relative[1],
        p_value=absolute[2],
        sample_ratio=srm,
        confidence=confidence,
        notes=tuple(notes),
    )


# -- steps -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Arm:
    summary: VariantSummary
    var: float | None  # sample variance


def _as_table(outcomes: Any) -> pa.Table:
    if isinstance(outcomes, pa.RecordBatch):
        outcomes = pa.Table.from_batches([outcomes])
    elif not isinstance(outcomes, pa.Table) and hasattr(outcomes, "to_arrow"):  # a Polars frame
        outcomes = outcomes.to_arrow()
    if not isinstance(outcomes, pa.Table):
        raise SchemaError(f"outcomes must be an Arrow table or a Polars frame, not {type(outcomes).__name__}")
    missing = [c for c in COLUMNS if c not in outcomes.column_names]
    if missing:
        raise SchemaError(f"outcomes lack column(s) {missing}: give one row per unit with columns {list(COLUMNS)}")
    table = outcomes.select(list(COLUMNS))
    for name in COLUMNS:
        if table[name].null_count:
            hint = " (write 0 for a unit without conversion or revenue)" if name == "value" else ""
            raise SchemaError(f"outcomes column {name!r} has {table[name].null_count} null(s){hint}")
    value_type = table.schema.field("value").type
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal)
    if not any(is_type(value_type) for is_type in numeric):
        raise SchemaError(f"outcomes column 'value' must be numeric (0/1 or an amount), not {value_type}")
    values = pc.cast(table["value"], pa.float64())
    if not pc.all(pc.is_finite(values)).as_py() and len(values):
        raise SchemaError("outcomes column 'value' holds NaN or infinite numbers: fix the metric that produced them")
    table = table.set_column(2, "value", values).set_column(1, "variant", pc.cast(table["variant"], pa.string()))
    distinct = pc.count_distinct(table["unit"]).as_py()
    if distinct != table.num_rows:
        raise SchemaError(
            f"{table.num_rows - distinct} row(s) repeat a unit: give one row per unit "
            "(sum a unit's values first; drop units exposed to several variants)"
        )
    return table


def _units_per_variant(table: pa.Table) -> dict[str, int]:
    counted = pc.value_counts(table["variant"]).to_pylist()
    return {str(row["values"]): int(row["counts"]) for row in counted}


def _summarize(table: pa.Table, name: str, units: int, notes: list[str]) -> _Arm:
    if units == 0:
        notes.append(f"variant {name!r} has no units yet: nothing to compare")
        return _Arm(VariantSummary(name, 0, None, None), None)
    values = _values(table, name)
    mean = float(np.mean(values))
    if units < 2:
        notes.append(f"variant {name!r} has 1 unit: at least 2 per variant are needed for an interval")
        return _Arm(VariantSummary(name, 1, mean, None), None)
    var = float(np.var(values, ddof=1))
    return _Arm(VariantSummary(name, units, mean, math.sqrt(var)), var)


def _values(table: pa.Table, name: str) -> np.ndarray:
    chosen = pc.filter(table["value"], pc.equal(table["variant"], name))
    return np.asarray(chosen.to_numpy(), dtype=np.float64)


_NO_FIGURES: tuple[Any, ...] = (None, None, None)


def _compare(c: _Arm, t: _Arm, confidence: float, notes: list[str]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """((absolute lift, its CI, p-value), (relative lift, its CI, None))."""
    if c.summary.mean is None or t.summary.mean is None:
        return _NO_FIGURES, _NO_FIGURES
    mc, mt = c.summary.mean, t.summary.mean
    diff = mt - mc
    relative = mt / mc - 1 if mc != 0 else None
    if relative is None:
        notes.append("the control mean is 0: the relative lift is undefined")
    if c.var is None or t.var is None:
        return (diff, None, None), (relative, None, None)
    vc, vt = c.var / c.summary.units, t.var / t.summary.units
    se = math.sqrt(vc + vt)
    if se == 0:
        notes.append("every unit within each variant has the same value (zero variance): no test is possible yet")
        return (diff, None, None), (relative, None, None)
    # Welch-Satterthwaite degrees of freedom; a zero-variance arm contributes nothing to them.
    df = (vc + vt) ** 2 / ((vc**2 / (c.summary.units - 1)) + (vt**2 / (t.summary.units - 1)))
    t_crit = float(stats.t.ppf(0.5 + confidence / 2, df))
    p_value = float(2 * stats.t.sf(abs(diff) / se, df))
    absolute = (diff, (diff - t_crit * se, diff + t_crit * se), p_value)
    if relative is None:
        return absolute, _NO_FIGURES
    # Delta method for mt/mc with independent arms: Var ~ vt/mc^2 + mt^2 vc / mc^4.
    se_rel = math.sqrt(vt / mc**2 + mt**2 * vc / mc**4)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    return absolute, (relative, (relative - z * se_rel, relative + z * se_rel), None)


def _sample_ratio(counts: Mapping[str, int], weights: Mapping[str, float], notes: list[str]) -> SampleRatioCheck:
    total_weight = math.fsum(w for w in weights.values() if w > 0)
    observed = {name: counts.get(name, 0) for name in weights}
    shares = {name: (w / total_weight if w > 0 else 0.0) for name, w in weights.items()}
    units = sum(observed.values())
    if any(observed[n] and shares[n] == 0 for n in weights):
        notes.append("units were assigned to a variant of weight 0: the assignment is broken")
        return SampleRatioCheck(observed, shares, 0.0, True)
    tested = [n for n in weights if shares[n] > 0]
    if units == 0 or len(tested) < 2:
        notes.append("not enough units or variants for a sample-ratio check")
        return SampleRatioCheck(observed, shares, None, False)
    f_obs = np.array([observed[n] for n in tested], dtype=np.float64)
    f_exp = np.array([shares[n] * units for n in tested], dtype=np.float64)
    p_value = float(stats.chisquare(f_obs, f_exp).pvalue)
    mismatch = p_value < SRM_P_THRESHOLD
    if mismatch:
        notes.append(
            f"sample ratio mismatch (p = {p_value:.2g} < {SRM_P_THRESHOLD}): units per variant do not match the "
            "declared weights, so assignment or exposure logging is broken; fix that before reading the lift"
        )
    return SampleRatioCheck(observed, shares, p_value, mismatch)


# -- formatting ------------------------------------------------------------------------------------


def _num(x: float | None, *, signed: bool = False, percent: bool = False) -> str:
    if x is None:
        return "n/a"
    if percent:
        return f"{x:+.1%}" if signed else f"{x:.1%}"
    if signed:
        return f"{x:+.4g}"
    return f"{x:.4g}" if abs(x) >= 1e-4 or x == 0 else f"{x:.1e}"


def _interval(ci: tuple[float, float] | None, *, percent: bool = False) -> str:
    if ci is None:
        return "n/a"
    return f"[{_num(ci[0], signed=True, percent=percent)}, {_num(ci[1], signed=True, percent=percent)}]"


def _variant_line(role: str, v: VariantSummary) -> str:
    return f"{role} {v.name!r}: {v.units:,} units, mean {_num(v.mean)}, std {_num(v.std)}"
