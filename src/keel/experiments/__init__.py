"""A/B experiments: variant assignment (at the gateway) and analysis (from the lake).

The analysis names are loaded on first use: they pull in scipy, which the gateway, importing
only the assignment, should not pay for at start-up.
"""

from typing import Any

from keel.experiments.assign import VariantLayout, assign, assign_one, layout

_ANALYSIS = ("ExperimentResult", "SampleRatioCheck", "VariantSummary", "analyze")

__all__ = ["VariantLayout", "assign", "assign_one", "layout", *_ANALYSIS]


def __getattr__(name: str) -> Any:
    if name in _ANALYSIS:
        from keel.experiments import analysis

        return getattr(analysis, name)
    raise AttributeError(f"module 'keel.experiments' has no attribute {name!r}")
