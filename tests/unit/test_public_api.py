"""The public surface of `keel` is explicit: this list changes only on purpose."""

from __future__ import annotations

import keel

PUBLIC = {
    "Event", "KeelError", "aggregate", "connect", "endpoint", "experiment", "freshness", "hopping", "job", "land",
    "metric", "processor", "session", "stream", "table", "tumbling", "view", "volume",
}


def test_public_names_are_pinned() -> None:
    assert set(keel.__all__) >= PUBLIC
    extra = set(keel.__all__) - PUBLIC
    assert extra <= {"stateful", "enrich", "lookup"}, f"new public names need review: {extra}"
    for name in keel.__all__:
        assert hasattr(keel, name), name


def test_declaring_functions_are_not_shadowed_by_subpackages() -> None:
    import keel.streaming.runner  # noqa: F401  (importing every subpackage must not replace keel.stream)

    assert callable(keel.stream) and callable(keel.table) and callable(keel.view)
