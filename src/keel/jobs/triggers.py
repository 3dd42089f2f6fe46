"""Data-aware triggers: run a task when its inputs changed, as well as (or instead of) on cron.

A task's ``watch`` is a callable returning a token of its inputs' state (`table_versions` gives
one for lake tables); the scheduler calls it at every tick and runs the task, for the tick's time,
when the token differs from the one it last saw. The first token seen only starts the watch (as a
task first seen by a tick starts its schedule there). Tokens are kept in the scheduler's state,
claimed in the same transaction as the tick marks, so one ticker runs each change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keel.errors import NotFoundError
from keel.lake import Lake

Watch = Callable[[], str]


def table_versions(lake: Lake, tables: Sequence[str]) -> Watch:
    """A watch on lake `tables`: their versions, so any commit to one of them changes the token.

    A table not created yet reads as version -1 (its creation is a change).
    """
    names = sorted(set(tables))

    def token() -> str:
        versions = []
        for name in names:
            try:
                versions.append(f"{name}={lake.describe(name).version}")
            except NotFoundError:
                versions.append(f"{name}=-1")
        return ",".join(versions)

    return token
