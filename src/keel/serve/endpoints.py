"""Declared endpoints: the user's handler in a worker thread, with experiment assignment, exposure
logging, a time limit and the declared fallback.

A handler reads views through ``req.view(name).get(key)``; those reads go through the kv
backend's breaker and retry budget. When the handler fails on a backend (`BackendError`, an open
breaker) or runs past ``endpoint_timeout``, the endpoint's ``fallback`` (if declared) answers
instead, within what is left of the request's time; the answer carries ``X-Keel-Fallback: 1``.
Without a fallback the answer is 503 with Retry-After. Under an experiment, each answered request
logs one exposure of its assigned variant, whether the handler or the fallback answered (intent to
treat), after the answer is computed; a bus failure there answers 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from starlette.requests import Request
from starlette.responses import Response

from keel.project.declare import Endpoint
from keel.errors import BackendError, ValidationError
from keel.experiments.assign import assign_one
from keel.project.exposures import EXPOSURES, Exposure
from keel.kv.views import Views
from keel.serve.ingest import to_batch
from keel.serve.resilience import Backend, CircuitOpenError
from keel.serve.responses import json_response, unavailable

Produce = Callable[[str, pa.RecordBatch], object]  # `keel.bus.Bus.produce`


@dataclass
class EndpointRequest:
    """What a declared endpoint's handler gets: path and query parameters, and view lookups."""

    params: dict[str, str]
    query: dict[str, str]
    views: Views
    kv: Backend | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    def view(self, name: str) -> ViewReader:
        return ViewReader(self.views, name, self.kv)


@dataclass(frozen=True)
class ViewReader:
    views: Views
    name: str
    kv: Backend | None = None

    def get(self, key: str) -> Any | None:
        if self.kv is None:
            return self.views.get(self.name, key)
        return self.kv.call_sync(lambda: self.views.get(self.name, key), retry=True)


def endpoint_handler(ep: Endpoint, views: Views, produce: Produce, kv: Backend, bus: Backend, executor: Executor,
                     timeout: float, on_fallback: Callable[[], None]) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette handler of ``ep``: its handler reads ``views`` through ``kv``; its exposures are
    written by ``produce`` (the bus's) through ``bus``."""
    exp = ep.experiment
    fallback = getattr(ep, "fallback", None)

    def primary(params: dict[str, str], query: dict[str, str], variant: str | None) -> object:
        req = EndpointRequest(params, query, views, kv)
        return ep.handler(req) if variant is None else ep.handler(req, variant)

    def secondary(params: dict[str, str], query: dict[str, str]) -> object:
        assert fallback is not None
        return fallback(EndpointRequest(params, query, views, kv))

    def expose(variant: str, unit: str) -> None:
        assert exp is not None
        exposure = Exposure(experiment=exp.name, variant=variant, unit=unit, endpoint=ep.name)
        batch, _ = to_batch([exposure], "unit", Exposure.schema_version)
        bus.call_sync(lambda: produce(EXPOSURES, batch))

    async def handle(request: Request) -> Response:
        loop = asyncio.get_running_loop()
        params, query = dict(request.path_params), dict(request.query_params)
        variant = unit = None
        if exp is not None:
            unit = params.get(exp.unit) or query.get(exp.unit)
            if not unit:
                return json_response({"error": "bad request", "errors": [
                    {"index": None, "field": exp.unit, "error": "required to assign a variant"}]}, 400)
            variant = assign_one(exp.name, unit, exp.variants)
        headers: dict[str, str] = {}
        try:
            result = await asyncio.wait_for(loop.run_in_executor(executor, primary, params, query, variant), timeout)
        except ValidationError as exc:
            return json_response({"error": "bad request", "errors": exc.errors}, 400)
        except (BackendError, TimeoutError) as exc:
            if fallback is None:
                return unavailable(_why(ep, exc, timeout), exc.retry_after if isinstance(exc, CircuitOpenError) else 1)
            # the fallback gets the time the request has left: the front's limit cuts it past that
            try:
                result = await loop.run_in_executor(executor, secondary, params, query)
            except BackendError as exc2:
                return unavailable(f"{_why(ep, exc, timeout)}; its fallback failed too: {exc2}",
                                   exc2.retry_after if isinstance(exc2, CircuitOpenError) else 1)
            on_fallback()
            headers["x-keel-fallback"] = "1"
        if variant is not None and unit is not None:
            # one exposure per answered request, by assignment (intent to treat), fallback or not:
            # dropping the units whose answer fell back would bias the experiment's analysis
            await loop.run_in_executor(executor, expose, variant, unit)
            if isinstance(result, dict) and not headers:
                result = {"variant": variant, **result}
        return json_response(result, headers=headers)

    return handle


def _why(ep: Endpoint, exc: Exception, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"endpoint {ep.name!r} did not answer within {timeout}s"
    return f"endpoint {ep.name!r} could not read what it needs: {exc}"


__all__ = ["EndpointRequest", "ViewReader", "endpoint_handler"]
