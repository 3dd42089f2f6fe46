"""Run slots: how many runs may execute at once, in all and per task.

One `Slots` is shared by everything a scheduler runs (ticks, triggers, backfills), so a manual
run counts against the same limits as a scheduled one.
"""

from __future__ import annotations

import threading
from collections import Counter


class Slots:
    """`total` runs at once across all tasks; a task's own limit is passed to each call."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"slots must be >= 1, not {total}")
        self.total = total
        self.changed = threading.Condition()
        self._active = 0
        self._by_task: Counter[str] = Counter()

    def try_take(self, task: str, limit: int | None) -> bool:
        """Take a slot for `task` if one is free (caller holds `changed`)."""
        if self._active >= self.total or (limit is not None and self._by_task[task] >= limit):
            return False
        self._active += 1
        self._by_task[task] += 1
        return True

    def take(self, task: str, limit: int | None) -> None:
        """Wait for a slot for `task` and take it."""
        with self.changed:
            while not self.try_take(task, limit):
                self.changed.wait()

    def give_back(self, task: str) -> None:
        with self.changed:
            self._active -= 1
            self._by_task[task] -= 1
            self.changed.notify_all()

    def active(self, task: str | None = None) -> int:
        with self.changed:
            return self._active if task is None else self._by_task[task]
