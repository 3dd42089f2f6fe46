"""The HTTP gateway: an ASGI app (Starlette) built from a project's declarations.

Routes:
  POST /v1/streams/{stream}/events   ingest (object, array or NDJSON); 202 once durable on the bus
  GET  /v1/views/{view}/{key}        one view value;  POST /v1/views/{view} {"keys": [...]} many
  <declared endpoints>               with experiment assignment and exposure logging
  GET  /healthz /readyz /metrics /openapi.json
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pyarrow as pa
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keel.declare import Endpoint
from keel.errors import KeelError, NotFoundError, ValidationError
from keel.experiments.assign import assign_one
from keel.experiments.exposures import EXPOSURES, Exposure
from keel.serve.ingest import parse_events, to_batch
from keel.serve.openapi import openapi_document

_json = msgspec.json.Encoder()
Handler = Callable[[Request], Awaitable[Response]]


def _json_response(obj: Any, status: int = 200) -> Response:
    return Response(_json.encode(obj), status_code=status, media_type="application/json")


@dataclass
class EndpointRequest:
    """What a declared endpoint's handler gets: path and query parameters, and view lookups."""

    params: dict[str, str]
    query: dict[str, str]
    runtime: Any
    cache: dict[str, Any] = field(default_factory=dict)

    def view(self, name: str) -> ViewReader:
        return ViewReader(self.runtime.views, name)


@dataclass(frozen=True)
class ViewReader:
    views: Any
    name: str

    def get(self, key: str) -> Any | None:
        return self.views.get(self.name, key)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("keel_http_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("keel_http_request_seconds", "HTTP request latency by route", ["route", "method"],
                                 registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.ingested = Counter("keel_events_ingested", "events acknowledged durably, by stream", ["stream"],
                                registry=self.registry)
        self.rejected = Counter("keel_events_rejected", "requests refused as invalid, by stream", ["stream"],
                                registry=self.registry)

    def wrap(self, route: str, fn: Handler) -> Handler:
        async def timed(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                response = await fn(request)
            except KeelError as exc:
                response = _json_response({"error": str(exc)}, 404 if isinstance(exc, NotFoundError) else 503)
            self.latency.labels(route, request.method).observe(time.perf_counter() - t0)
            self.requests.labels(route, request.method, str(response.status_code)).inc()
            return response

        return timed


def build_app(runtime: Any) -> Starlette:
    """The gateway of `runtime`'s project."""
    catalog = runtime.catalog
    limit = runtime.config.serve.max_body_bytes
    metrics = Metrics()

    async def ingest(request: Request) -> Response:
        name = request.path_params["stream"]
        decl = catalog.streams.get(name)
        if decl is None:
            return _json_response({"error": f"no stream {name!r}; streams: {sorted(catalog.streams)}"}, 404)
        body = await request.body()
        if len(body) > limit:
            return _json_response({"error": f"body of {len(body)} bytes exceeds the {limit}-byte limit; "
                                            "send smaller batches"}, 413)
        ndjson = "ndjson" in request.headers.get("content-type", "")
        try:
            events = parse_events(decl.schema, body, ndjson)
        except ValidationError as exc:
            metrics.rejected.labels(name).inc()
            return _json_response({"error": "invalid events; nothing was written", "errors": exc.errors}, 400)
        if not events:
            return _json_response({"error": "no events in the body"}, 400)
        batch, ids = to_batch(events, decl.key, decl.schema.schema_version)
        await run_in_threadpool(runtime.bus.produce, name, batch)
        metrics.ingested.labels(name).inc(len(events))
        return _json_response({"accepted": len(events), "event_ids": ids}, 202)

    async def view_one(request: Request) -> Response:
        view, key = request.path_params["view"], request.path_params["key"]
        (raw,) = runtime.views.get_raw(view, [key])
        if raw is None:
            return _json_response({"error": f"no value for key {key!r} in view {view!r}"}, 404)
        return Response(raw, media_type="application/json")

    async def view_many(request: Request) -> Response:
        view = request.path_params["view"]
        try:
            keys = msgspec.json.decode(await request.body(), type=dict[str, list[str]])["keys"]
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError):
            return _json_response({"error": 'send {"keys": ["k1", "k2", ...]}'}, 400)
        raws = runtime.views.get_raw(view, keys)
        values = {k: (None if r is None else msgspec.Raw(r)) for k, r in zip(keys, raws)}
        return _json_response({"values": values})

    async def healthz(request: Request) -> Response:
        return _json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await run_in_threadpool(runtime.bus.list_streams)
            await run_in_threadpool(runtime.kv.get, "__ready__")
        except KeelError as exc:
            return _json_response({"status": "not ready", "error": str(exc)}, 503)
        return _json_response({"status": "ready"})

    async def metrics_route(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    document = openapi_document(catalog)

    async def openapi(request: Request) -> Response:
        return _json_response(document)

    routes = [
        Route("/v1/streams/{stream}/events", metrics.wrap("ingest", ingest), methods=["POST"]),
        Route("/v1/views/{view}/{key}", metrics.wrap("view", view_one), methods=["GET"]),
        Route("/v1/views/{view}", metrics.wrap("views", view_many), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    for ep in catalog.endpoints.values():
        routes.append(Route(ep.path, metrics.wrap(ep.name, _endpoint_handler(runtime, ep)), methods=[ep.method]))
    return Starlette(routes=routes)


def _endpoint_handler(runtime: Any, ep: Endpoint) -> Handler:
    exp = ep.experiment

    def call(params: dict[str, str], query: dict[str, str]) -> Any:
        req = EndpointRequest(params, query, runtime)
        if exp is None:
            return ep.handler(req)
        unit = params.get(exp.unit) or query.get(exp.unit)
        if not unit:
            raise ValidationError([{"index": None, "field": exp.unit, "error": "required to assign a variant"}])
        variant = assign_one(exp.name, unit, exp.variants)
        result = ep.handler(req, variant)
        exposure = Exposure(experiment=exp.name, variant=variant, unit=unit, endpoint=ep.name)
        batch, _ = to_batch([exposure], "unit", Exposure.schema_version)
        runtime.bus.produce(EXPOSURES, batch)
        return {"variant": variant, **result} if isinstance(result, dict) else result

    async def handle(request: Request) -> Response:
        try:
            result = await run_in_threadpool(call, dict(request.path_params), dict(request.query_params))
        except ValidationError as exc:
            return _json_response({"error": "bad request", "errors": exc.errors}, 400)
        return _json_response(result)

    return handle


__all__ = ["build_app", "EndpointRequest", "pa"]
