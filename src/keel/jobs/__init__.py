"""Batch jobs and their scheduling: the Scheduler interface and the embedded engine."""

from keel.jobs.base import Run, RunState, Scheduler, Task, find_cycle, validate_cron, validate_tasks
from keel.jobs.embedded import EmbeddedScheduler

__all__ = ["EmbeddedScheduler", "Run", "RunState", "Scheduler", "Task", "find_cycle", "validate_cron", "validate_tasks"]
