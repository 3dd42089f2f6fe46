"""The HTTP gateway: an ASGI app built from a project's declarations.

Routes:
  POST /v1/streams/{stream}/events   ingest (object, array or NDJSON); 202 once durable on the bus
  GET  /v1/views/{view}/{key}        one view value;  POST /v1/views/{view} {"keys": [...]} many
  <declared endpoints>               with experiment assignment, exposure logging and fallbacks
  GET  /healthz /readyz /openapi.json (public)   GET /metrics (scope admin)

`keel.serve.front.Gateway` is the front door (keys, scopes, rate, shedding, body and time limits,
and the hot view route in raw ASGI); the Starlette router below serves the rest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router, compile_path

from keel.errors import BackendError, ValidationError
from keel.serve.endpoints import EndpointRequest, endpoint_handler
from keel.serve.front import Gateway, Services
from keel.serve.ingest import accepted_body, check_bounds, parse_events, to_batch
from keel.serve.keys import KeyRing, keys_path
from keel.serve.limits import GatewayOptions
from keel.serve.metrics import Metrics
from keel.serve.openapi import openapi_document
from keel.serve.produce import GroupProducer
from keel.serve.resilience import Backend
from keel.serve.responses import json_response, unavailable


def gateway_options(runtime: Any) -> GatewayOptions:
    """The options a runtime's config implies: its body and overload limits; keyless loopback only outside
    production."""
    config = runtime.config
    serve = config.serve
    return GatewayOptions(max_body_bytes=serve.max_body_bytes, anonymous_loopback=not config.production,
                          max_inflight_bytes=serve.max_inflight_bytes, max_queue_seconds=serve.max_queue_seconds)


def build_app(runtime: Any, options: GatewayOptions | None = None,
              clock: Callable[[], float] = time.time) -> Gateway:
    """The gateway of `runtime`'s project; `clock` (epoch seconds) is the ack time events are bounded by."""
    options = options or gateway_options(runtime)
    catalog = runtime.catalog
    services = Services(kv_url=runtime.config.kv, sync_kv=lambda: runtime.kv, kv=Backend("kv", options.kv),
                        bus=Backend("bus", options.bus),
                        executor=ThreadPoolExecutor(options.workers, thread_name_prefix="keel-gateway"))
    metrics = Metrics(services.breakers)
    producer = GroupProducer(lambda stream, table: runtime.bus.produce(stream, table), services.bus, services.executor)

    async def ingest(request: Request) -> Response:
        name = request.path_params["stream"]
        decl = catalog.streams.get(name)
        if decl is None:
            return json_response({"error": f"no stream {name!r}; streams: {sorted(catalog.streams)}"}, 404)
        body = await request.body()
        ndjson = "ndjson" in request.headers.get("content-type", "")
        try:
            events = parse_events(decl.schema, body, ndjson)
            if not events:
                return json_response({"error": "no events in the body"}, 400)
            now_ms = int(clock() * 1000)
            batch, ids = to_batch(events, decl.key, decl.schema.schema_version, now_ms)
            check_bounds(decl, events, batch, now_ms)
        except ValidationError as exc:
            metrics.rejected.labels(name).inc()
            return json_response({"error": "invalid events; nothing was written", "errors": exc.errors}, 400)
        try:
            await producer.produce(name, batch)
        except BackendError as exc:
            # a produce that timed out may still complete: the events carry ids, so a retry is detectable
            return unavailable(f"events not acknowledged (they may or may not have been written; retrying is "
                               f"safe, each event has an event_id): {exc}", getattr(exc, "retry_after", 1.0))
        metrics.ingested.labels(name).inc(len(events))
        return Response(accepted_body(ids), 202, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        """Ready when no breaker is open and both backends answer within their timeouts."""
        breakers = services.breakers()
        if any(state != "closed" for state in breakers.values()):
            return json_response({"status": "not ready", "breakers": breakers}, 503, {"retry-after": "1"})
        loop = asyncio.get_running_loop()
        try:
            await services.read(["__ready__"])
            await services.bus.call(lambda: loop.run_in_executor(services.executor, runtime.bus.list_streams))
        except BackendError as exc:
            return json_response({"status": "not ready", "error": str(exc), "breakers": services.breakers()}, 503,
                                 {"retry-after": "1"})
        return json_response({"status": "ready", "breakers": breakers})

    async def metrics_route(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    document = openapi_document(catalog)

    async def openapi(request: Request) -> Response:
        return json_response(document)

    routes = [
        Route("/v1/streams/{stream}/events", ingest, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    endpoints = []
    for ep in catalog.endpoints.values():
        handler = endpoint_handler(runtime, ep, services.kv, services.bus, services.executor,
                                   options.endpoint_timeout, metrics.fallbacks.labels(ep.name).inc)
        routes.append(Route(ep.path, handler, methods=[ep.method]))
        endpoints.append((ep.name, compile_path(ep.path)[0], f"call:{ep.name}"))
    keyring = KeyRing(keys_path(runtime.state_dir))
    return Gateway(Router(routes=routes), services, options, keyring, metrics, set(catalog.views), endpoints)


__all__ = ["EndpointRequest", "Gateway", "GatewayOptions", "build_app", "gateway_options"]
