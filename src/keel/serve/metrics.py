"""The gateway's Prometheus metrics: requests and latency by route, shed/limited requests, breakers."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from keel.monitor.streams import stream_collector

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _Breakers(Collector):
    def __init__(self, states: Callable[[], dict[str, str]]) -> None:
        self.states = states

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily("keel_backend_breaker_open", "1 while a backend's circuit breaker is open",
                              labels=["backend"])
        for name, state in self.states().items():
            g.add_metric([name], 0.0 if state == "closed" else 1.0)
        yield g


class Metrics:
    def __init__(self, breaker_states: Callable[[], dict[str, str]] = dict) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("keel_http_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("keel_http_request_seconds", "HTTP request latency by route", ["route", "method"],
                                 registry=self.registry, buckets=_BUCKETS)
        self.ingested = Counter("keel_events_ingested", "events acknowledged durably, by stream", ["stream"],
                                registry=self.registry)
        self.rejected = Counter("keel_events_rejected", "requests refused as invalid, by stream", ["stream"],
                                registry=self.registry)
        self.refused = Counter("keel_http_refused", "requests refused: shed (503: over concurrency `shed`, waited "
                               "too long `queue`, over the memory budget `memory`), rate limited (429), "
                               "unauthenticated (401), forbidden (403), too large (413), body too slow (408, "
                               "`slow_client`)", ["reason"], registry=self.registry)
        self.queued = Histogram("keel_http_queue_seconds", "time requests waited between arrival and service "
                                "(those served; longer ones are shed)", registry=self.registry, buckets=_BUCKETS)
        self.fallbacks = Counter("keel_endpoint_fallbacks", "endpoint answers served by the declared fallback",
                                 ["endpoint"], registry=self.registry)
        self.registry.register(_Breakers(breaker_states))
        self.registry.register(stream_collector())  # processors of this process (`keel up`) show here too
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request; the labelled children are cached (this runs on the hot path)."""
        key = (route, method, status)
        pair = self._children.get(key)
        if pair is None:
            if len(self._children) > 10_000:  # route names are bounded; methods and statuses are not
                self._children.clear()
            pair = self._children[key] = (self.requests.labels(route, method, str(status)),
                                          self.latency.labels(route, method))
        pair[0].inc()
        pair[1].observe(seconds)


__all__ = ["Metrics"]
