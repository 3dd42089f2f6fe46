"""Prometheus metrics of stream processors, in one registry the gateway's `/metrics` can include.

Every `keel.streaming.runner.Runner` of the process reports here, labelled by processor:
events and batches processed, late and dead-lettered events, batch latency, watermark delay
(wall clock minus watermark) and consumer lag (records on the bus not yet processed).

    from keel.monitor.streams import stream_registry
    generate_latest(stream_registry())        # or: gateway_registry.register(stream_collector())
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

_REGISTRY = CollectorRegistry()
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

EVENTS = Counter("keel_stream_events", "events processed, by processor", ["processor"], registry=_REGISTRY)
BATCHES = Counter("keel_stream_batches", "micro-batches processed, by processor", ["processor"], registry=_REGISTRY)
LATE = Counter("keel_stream_late_events", "events later than the allowed lateness, routed to the side output",
               ["processor"], registry=_REGISTRY)
DEAD = Counter("keel_stream_dead_lettered", "records sent to the dead-letter stream", ["processor"], registry=_REGISTRY)
BATCH_SECONDS = Histogram("keel_stream_batch_seconds", "time to process one micro-batch (decode to commit)",
                          ["processor"], registry=_REGISTRY, buckets=_BUCKETS)
EVENTS_PER_S = Gauge("keel_stream_events_per_second", "events per second over the last few seconds",
                     ["processor"], registry=_REGISTRY)
WATERMARK_DELAY = Gauge("keel_stream_watermark_delay_seconds", "wall clock minus the watermark (windowed processors)",
                        ["processor"], registry=_REGISTRY)
LAG = Gauge("keel_stream_consumer_lag", "records on the bus not yet processed, by processor", ["processor"],
            registry=_REGISTRY)


def stream_registry() -> CollectorRegistry:
    """The registry holding every processor's metrics in this process."""
    return _REGISTRY


class _Forward(Collector):
    def collect(self) -> Iterable[Any]:
        return _REGISTRY.collect()


def stream_collector() -> Collector:
    """A collector that yields the stream metrics, to register into another registry (the gateway's)."""
    return _Forward()


def processor_metrics(name: str) -> dict[str, Any]:
    """The labelled children of one processor (cached by prometheus-client)."""
    return {"events": EVENTS.labels(name), "batches": BATCHES.labels(name), "late": LATE.labels(name),
            "dead": DEAD.labels(name), "batch_seconds": BATCH_SECONDS.labels(name),
            "events_per_s": EVENTS_PER_S.labels(name), "watermark_delay": WATERMARK_DELAY.labels(name),
            "lag": LAG.labels(name)}
