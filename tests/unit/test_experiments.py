"""Experiments: deterministic assignment by hashing, and the analysis of a treatment against control."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from hashlib import blake2b
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from scipy import stats

from keel.errors import ConfigError, SchemaError, ValidationError
from keel.experiments.analysis import ExperimentResult, analyze
from keel.experiments.assign import assign, assign_one, layout

UNITS = [f"user-{i}" for i in range(100_000)]
HALF = {"control": 0.5, "treatment": 0.5}


def share(assigned: list[str], variant: str) -> float:
    return assigned.count(variant) / len(assigned)


def within_sigmas(observed: float, p: float, n: int, sigmas: float = 4.5) -> bool:
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


# -- assignment ------------------------------------------------------------------------------------


def test_assignment_is_pinned_so_it_never_changes_between_versions() -> None:
    # A changed hash would silently move every running experiment's users between variants.
    first = [f"user-{i}" for i in range(10)]
    assert assign("recs_v2", first, {"trending": 0.5, "personal": 0.5}) == [
        "trending", "personal", "personal", "personal", "personal",
        "trending", "trending", "trending", "personal", "trending",
    ]  # fmt: skip
    point = (int.from_bytes(blake2b(b"recs_v2:user-0", digest_size=8).digest(), "big") >> 11) * 2**-53
    assert layout("recs_v2", {"trending": 0.5, "personal": 0.5}).point("user-0") == point
    # Slices follow sorted names: "personal" owns [0, 0.5), "trending" [0.5, 1).
    assert (point >= 0.5) == (assign_one("recs_v2", "user-0", {"trending": 1, "personal": 1}) == "trending")


def test_assignment_is_deterministic_and_the_same_on_every_path() -> None:
    batch = assign("exp", UNITS[:5000], HALF)
    assert batch == assign("exp", UNITS[:5000], HALF)
    assert batch == [assign_one("exp", u, HALF) for u in UNITS[:5000]]
    arrow = assign("exp", pa.array(UNITS[:5000]), HALF)
    assert isinstance(arrow, pa.Array) and arrow.type == pa.string() and arrow.to_pylist() == batch
    chunked = assign("exp", pa.chunked_array([UNITS[:2000], UNITS[2000:5000]]), HALF)
    assert isinstance(chunked, pa.Array) and chunked.to_pylist() == batch
    # Reordering the declaration or rescaling the weights changes nothing.
    assert assign("exp", UNITS[:5000], {"treatment": 5, "control": 5}) == batch
    # Integer ids are assigned as the strings the gateway sees in a URL.
    assert assign("exp", pa.array([7, 42]), HALF).to_pylist() == assign("exp", ["7", "42"], HALF)


@pytest.mark.parametrize(
    ("weights", "variant", "expected"), [(HALF, "treatment", 0.5), ({"a": 0.9, "b": 0.1}, "b", 0.1)]
)
def test_assignment_matches_the_weights(weights: dict[str, float], variant: str, expected: float) -> None:
    assigned = assign("weights_check", UNITS, weights)
    assert set(assigned) == set(weights)
    assert within_sigmas(share(assigned, variant), expected, len(UNITS))


def test_assignment_is_uniform_across_many_variants() -> None:
    names = [f"v{i}" for i in range(10)]
    assigned = assign("uniform", UNITS, dict.fromkeys(names, 1.0))
    counts = [assigned.count(n) for n in names]
    assert stats.chisquare(counts).pvalue > 0.001


def test_experiments_split_units_independently() -> None:
    first = np.array(assign("homepage", UNITS, HALF)) == "treatment"
    second = np.array(assign("checkout", UNITS, HALF)) == "treatment"
    table = [[int(np.sum(first & second)), int(np.sum(first & ~second))],
             [int(np.sum(~first & second)), int(np.sum(~first & ~second))]]  # fmt: skip
    assert stats.chi2_contingency(table).pvalue > 0.001


def test_changing_weights_moves_only_the_units_near_the_boundary() -> None:
    before = assign("ramp", UNITS, {"control": 0.9, "treatment": 0.1})
    after = assign("ramp", UNITS, {"control": 0.5, "treatment": 0.5})
    assert all(a == "treatment" for b, a in zip(before, after, strict=True) if b == "treatment")
    moved = sum(b != a for b, a in zip(before, after, strict=True)) / len(UNITS)
    assert within_sigmas(moved, 0.4, len(UNITS))


def test_zero_weight_variants_get_nobody_and_bad_weights_are_refused() -> None:
    assert "paused" not in assign("z", UNITS[:20_000], {"control": 1, "paused": 0, "treatment": 1})
    for bad in ({}, {"a": -1.0, "b": 1.0}, {"a": 0.0, "b": 0.0}, {"a": float("nan"), "b": 1.0}):
        with pytest.raises(ConfigError, match="experiment 'bad'"):
            assign_one("bad", "u", bad)


def test_null_or_non_string_units_are_refused() -> None:
    with pytest.raises(ValidationError, match="event 1: unit"):
        assign("exp", pa.array(["a", None, "c"]), HALF)
    with pytest.raises(ValidationError, match="is not a string"):
        assign("exp", ["a", 3], HALF)


# -- analysis --------------------------------------------------------------------------------------


def outcomes(control: np.ndarray, treatment: np.ndarray, names: tuple[str, str] = ("control", "treatment")) -> pa.Table:
    n_c, n_t = len(control), len(treatment)
    return pa.table({
        "unit": np.arange(n_c + n_t),  # any type with distinct values will do
        "variant": [names[0]] * n_c + [names[1]] * n_t,
        "value": np.concatenate([control, treatment]).astype(np.float64),
    })  # fmt: skip


def conversions(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    return (rng.random(n) < rate).astype(np.int64)


def run(table: Any, weights: dict[str, float] | None = HALF) -> ExperimentResult:
    return analyze(table, control="control", treatment="treatment", weights=weights)


def test_analysis_recovers_a_built_in_conversion_lift() -> None:
    rng = np.random.default_rng(1)
    result = run(outcomes(conversions(rng, 20_000, 0.10), conversions(rng, 20_000, 0.12)))
    assert result.significant and result.p_value is not None and result.p_value < 0.001
    assert result.absolute_lift_ci is not None and result.absolute_lift_ci[0] < 0.02 < result.absolute_lift_ci[1]
    assert result.relative_lift_ci is not None and result.relative_lift_ci[0] < 0.2 < result.relative_lift_ci[1]
    assert result.control.units == result.treatment.units == 20_000
    assert not result.srm and result.sample_ratio is not None
    assert any("significant at 95%" in line for line in result.summary_lines())
    printed = json.loads(json.dumps(result.to_dict()))
    assert printed["srm"] is False and printed["significant"] is True
    assert printed["relative_lift_ci"] == list(result.relative_lift_ci)
    assert printed["treatment"]["units"] == 20_000 and printed["sample_ratio"]["p_value"] > 0.001


def test_welch_figures_match_scipy_on_revenue_like_data() -> None:
    rng = np.random.default_rng(7)
    control, treatment = rng.lognormal(3.0, 1.0, 3000), rng.lognormal(3.05, 1.2, 2500)
    result = run(outcomes(control, treatment), weights=None)
    reference = stats.ttest_ind(treatment, control, equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.absolute_lift_ci == pytest.approx((interval.low, interval.high), rel=1e-9)
    assert result.absolute_lift == pytest.approx(treatment.mean() - control.mean())
    assert result.relative_lift == pytest.approx(treatment.mean() / control.mean() - 1)
    assert result.control.std == pytest.approx(control.std(ddof=1))
    assert result.sample_ratio is None and not result.srm


def test_for_conversions_welch_agrees_with_the_two_proportion_z_test() -> None:
    rng = np.random.default_rng(3)
    c, t = conversions(rng, 30_000, 0.05), conversions(rng, 30_000, 0.055)
    pooled = (c.sum() + t.sum()) / 60_000
    z = (t.mean() - c.mean()) / math.sqrt(pooled * (1 - pooled) * (2 / 30_000))
    assert run(outcomes(c, t)).p_value == pytest.approx(2 * stats.norm.sf(abs(z)), abs=2e-3)


@pytest.mark.slow  # hundreds of simulated experiments
def test_a_a_tests_are_significant_about_five_percent_of_the_time() -> None:
    rng = np.random.default_rng(2024)
    false_positives = sum(
        run(outcomes(conversions(rng, 2000, 0.1), conversions(rng, 2000, 0.1))).significant for _ in range(400)
    )
    assert 0.02 <= false_positives / 400 <= 0.09


@pytest.mark.slow  # hundreds of simulated experiments
def test_relative_lift_interval_covers_the_truth_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(11)
    covered = 0
    for _ in range(300):
        result = run(outcomes(conversions(rng, 4000, 0.10), conversions(rng, 4000, 0.12)))
        assert result.relative_lift_ci is not None
        covered += result.relative_lift_ci[0] <= 0.2 <= result.relative_lift_ci[1]
    assert 0.90 <= covered / 300 <= 0.99


def test_sample_ratio_mismatch_is_flagged_for_52_48_but_not_for_a_fair_split() -> None:
    rng = np.random.default_rng(5)
    skewed = run(outcomes(conversions(rng, 52_000, 0.1), conversions(rng, 48_000, 0.1)))
    assert skewed.srm and skewed.sample_ratio is not None and skewed.sample_ratio.p_value is not None
    assert skewed.sample_ratio.p_value < 1e-10 and skewed.sample_ratio.observed == {
        "control": 52_000,
        "treatment": 48_000,
    }
    assert any("MISMATCH" in line for line in skewed.summary_lines())
    assigned = assign("fair", UNITS, HALF)
    fair = run(pa.table({"unit": UNITS, "variant": assigned, "value": conversions(rng, len(UNITS), 0.1)}))
    assert fair.sample_ratio is not None and not fair.srm
    assert fair.sample_ratio.expected_share == {"control": 0.5, "treatment": 0.5}


def test_sample_ratio_uses_the_declared_weights_of_every_variant() -> None:
    rng = np.random.default_rng(8)
    weights = {"control": 0.8, "treatment": 0.1, "other": 0.1}
    units = [f"u{i}" for i in range(50_000)]
    assigned = assign("three", units, weights)
    table = pa.table({"unit": units, "variant": assigned, "value": conversions(rng, 50_000, 0.2)})
    fair = run(table, weights)
    assert fair.sample_ratio is not None and not fair.srm and set(fair.sample_ratio.observed) == set(weights)
    # The same units judged against a declared 50/50 between control and treatment: broken.
    assert run(table, {"control": 1, "treatment": 1, "other": 1}).srm


def test_polars_input_and_boolean_values_work() -> None:
    frame = pl.DataFrame({"unit": ["a", "b", "c", "d"], "variant": ["control", "control", "treatment", "treatment"],
                          "value": [True, False, True, True]})  # fmt: skip
    result = run(frame)
    assert (result.control.mean, result.treatment.mean, result.absolute_lift) == (0.5, 1.0, 0.5)


def has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value) or math.isinf(value)
    if isinstance(value, dict):
        return any(has_nan(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_nan(v) for v in value)
    return False


def assert_clean(result: ExperimentResult) -> None:
    assert not has_nan(result.to_dict())
    assert not any("nan" in line.lower() or "inf" in line.lower() for line in result.summary_lines())


def test_a_variant_without_units_gives_a_clear_empty_result() -> None:
    result = run(outcomes(np.array([0, 1, 0]), np.array([])))
    assert result.treatment.units == 0 and result.treatment.mean is None
    assert result.absolute_lift is None and result.p_value is None and not result.significant
    assert any("'treatment' has no units" in n for n in result.notes)
    assert_clean(result)


def test_an_experiment_without_any_outcome_yet_is_reported_not_raised() -> None:
    empty = pa.table({"unit": pa.array([], pa.string()), "variant": pa.array([], pa.string()),
                      "value": pa.array([], pa.float64())})  # fmt: skip
    result = run(empty)
    assert result.control.units == result.treatment.units == 0 and result.p_value is None and not result.srm
    assert any("sample-ratio" in n for n in result.notes)
    assert_clean(result)


def test_decimal_values_are_accepted() -> None:
    values = pa.array([Decimal("1.50"), Decimal("2.50"), Decimal("3.00"), Decimal("5.00")])
    table = pa.table({"unit": ["a", "b", "c", "d"], "variant": ["control", "control", "treatment", "treatment"],
                      "value": values})  # fmt: skip
    assert run(table).absolute_lift == 2.0


def test_a_single_unit_gives_means_but_no_interval() -> None:
    result = run(outcomes(np.array([3.0]), np.array([4.0, 6.0])), weights=None)
    assert result.control.std is None and result.absolute_lift == 2.0
    assert result.absolute_lift_ci is None and result.p_value is None
    assert any("1 unit" in n for n in result.notes)
    assert_clean(result)


def test_zero_variance_and_zero_control_mean_are_explained() -> None:
    nothing_yet = run(outcomes(np.zeros(500), np.zeros(500)))
    assert nothing_yet.absolute_lift == 0.0 and nothing_yet.p_value is None and nothing_yet.relative_lift is None
    assert any("zero variance" in n for n in nothing_yet.notes) and any(
        "control mean is 0" in n for n in nothing_yet.notes
    )
    assert_clean(nothing_yet)
    # The control has no conversions, the treatment some: the absolute test works, the relative lift cannot.
    rng = np.random.default_rng(4)
    only_treatment = run(outcomes(np.zeros(1000), conversions(rng, 1000, 0.05)))
    assert only_treatment.p_value is not None and only_treatment.significant
    assert only_treatment.relative_lift is None and only_treatment.relative_lift_ci is None
    assert_clean(only_treatment)


def test_bad_outcome_tables_are_refused_with_the_reason() -> None:
    good = {"unit": ["a", "b"], "variant": ["control", "treatment"], "value": [1.0, 0.0]}
    with pytest.raises(SchemaError, match=r"lack column\(s\) \['value'\]"):
        run(pa.table({k: v for k, v in good.items() if k != "value"}))
    with pytest.raises(SchemaError, match="null.*write 0"):
        run(pa.table({**good, "value": [1.0, None]}))
    with pytest.raises(SchemaError, match="repeat a unit"):
        run(pa.table({**good, "unit": ["a", "a"]}))
    with pytest.raises(SchemaError, match="must be numeric"):
        run(pa.table({**good, "value": ["yes", "no"]}))
    with pytest.raises(SchemaError, match=r"variant\(s\) \['ghost'\]"):
        run(pa.table({**good, "variant": ["control", "ghost"]}))
    with pytest.raises(ConfigError, match="both 'control'"):
        analyze(pa.table(good), control="control", treatment="control")
    with pytest.raises(SchemaError, match="Arrow table or a Polars frame"):
        run([("a", "control", 1.0)])
