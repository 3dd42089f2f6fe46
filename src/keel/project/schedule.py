"""What a job's schedule may be, and the order jobs depend on each other in.

`keel check` uses these on the declarations, and every scheduler engine on its tasks
(`keel.jobs.base.validate_tasks`), so a project and a scheduler agree on what is valid.
"""

from __future__ import annotations

import graphlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from croniter import CroniterBadDateError, croniter

CRON_PRESETS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def validate_cron(expr: str) -> str | None:
    """Return why `expr` is not a usable schedule, or None if it is.

    Accepted: 5 fields (minute hour day-of-month month day-of-week, read in UTC) or one of
    ``CRON_PRESETS``. Seconds and year fields are refused because Airflow does not take them.
    """
    text = expr.strip()
    if text.startswith("@"):
        if text not in CRON_PRESETS:
            return f"unknown cron preset {expr!r}: use one of {', '.join(CRON_PRESETS)}"
    elif len(text.split()) != 5:
        return (
            f"cron expression {expr!r} has {len(text.split())} fields: write 5 "
            "(minute hour day-of-month month day-of-week), e.g. '0 3 * * *' for 03:00 UTC daily"
        )
    try:
        croniter(text, _EPOCH).get_next(datetime)
    except CroniterBadDateError:
        return f"cron expression {expr!r} never fires (no date matches it)"
    except (ValueError, KeyError, TypeError) as exc:
        return f"bad cron expression {expr!r}: {exc}"
    return None


def find_cycle(edges: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle in `edges` (task -> its upstream tasks), or None.

    The cycle is returned closed and in the direction of dependence: ``["a", "b", "a"]`` means
    a waits for b and b waits for a. Names that appear only as upstream are leaves.
    """
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as exc:
        # graphlib lists the cycle from upstream to downstream; users read "a needs b".
        return [str(name) for name in reversed(exc.args[1])]
    return None
