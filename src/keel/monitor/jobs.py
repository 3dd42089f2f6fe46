"""The scheduler's Prometheus metrics, in the registry the gateway's /metrics serves (`keel up`)."""

from __future__ import annotations

from prometheus_client import Counter

from keel.jobs.base import Run
from keel.monitor.streams import stream_registry

SLA_MISSES = Counter("keel_job_sla_misses", "runs that had not succeeded by their job's SLA, by job", ["job"],
                     registry=stream_registry())


def count_sla_miss(run: Run) -> None:
    """The scheduler's `on_sla_miss`: counts one miss of `run`'s job."""
    SLA_MISSES.labels(run.task).inc()
