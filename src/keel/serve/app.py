"""The HTTP gateway: an ASGI app built from a project's declarations and its engines.

Its route table (`routes`, one entry per route, read by dispatch and by the OpenAPI document):
  POST /v1/streams/{stream}/events   ingest (object, array or NDJSON); 202 once durable on the bus
  GET  /v1/views/{view}/{key}        one view value;  POST /v1/views/{view} {"keys": [...]} many
  GET  /healthz /readyz /openapi.json (public)   GET /metrics (scope admin)
  <declared endpoints>               with experiment assignment, exposure logging and fallbacks

`keel.serve.front.Gateway` is the front door (keys, scopes, rate, shedding, body and time limits)
in front of the table; the view lookups take the fast raw-ASGI path, the rest a Starlette Request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from keel.engines import Engines
from keel.errors import BackendError, ValidationError
from keel.project.catalog import Catalog
from keel.project.config import ServeConfig
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
from keel.serve.routes import PUBLIC, Route, RouteTable
from keel.serve.views import ViewRoutes


def gateway_options(serve: ServeConfig, production: bool) -> GatewayOptions:
    """The options a profile implies: its body and overload limits; keyless loopback only outside
    production."""
    return GatewayOptions(max_body_bytes=serve.max_body_bytes, anonymous_loopback=not production,
                          max_inflight_bytes=serve.max_inflight_bytes, max_queue_seconds=serve.max_queue_seconds,
                          max_concurrency=serve.max_concurrency)


def build_app(catalog: Catalog, engines: Engines, kv_url: str, options: GatewayOptions,
              clock: Callable[[], float] = time.time) -> Gateway:
    """The gateway of a project: its declarations (`catalog`), the bus and views it serves from
    (`engines`; `kv_url` picks the views' async reader), its keys under ``engines.state_dir``;
    `clock` (epoch seconds) is the ack time events are bounded by."""
    bus, views = engines.bus, engines.views
    services = Services(kv_url=kv_url, sync_kv=lambda: views.kv, kv=Backend("kv", options.kv),
                        bus=Backend("bus", options.bus),
                        executor=ThreadPoolExecutor(options.workers, thread_name_prefix="keel-gateway"))
    metrics = Metrics(services.breakers)
    producer = GroupProducer(bus.produce, services.bus, services.executor)
    lookups = ViewRoutes(services.read, set(catalog.views), options.max_body_bytes)

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
            await services.bus.call(lambda: loop.run_in_executor(services.executor, bus.list_streams))
        except BackendError as exc:
            return json_response({"status": "not ready", "error": str(exc), "breakers": services.breakers()}, 503,
                                 {"retry-after": "1"})
        return json_response({"status": "ready", "breakers": breakers})

    async def metrics_route(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return json_response(document)

    # tried in this order; the view lookups first: they are the hot path
    routes = [
        Route("view", "GET", "/v1/views/{view}/{key}", "read:{view}", raw=lookups.one, timed=False),
        Route("views", "POST", "/v1/views/{view}", "read:{view}", raw=lookups.many),
        Route("ingest", "POST", "/v1/streams/{stream}/events", "ingest:{stream}", handler=ingest),
        Route("healthz", "GET", "/healthz", PUBLIC, handler=healthz),
        Route("readyz", "GET", "/readyz", PUBLIC, handler=readyz),
        Route("metrics", "GET", "/metrics", "admin", handler=metrics_route),
        Route("openapi.json", "GET", "/openapi.json", PUBLIC, handler=openapi),
    ]
    for ep in catalog.endpoints.values():
        handler = endpoint_handler(ep, views, bus.produce, services.kv, services.bus, services.executor,
                                   options.endpoint_timeout, metrics.fallbacks.labels(ep.name).inc)
        routes.append(Route(ep.name, ep.method, ep.path, f"call:{ep.name}", handler=handler))
    table = RouteTable(routes)
    document = openapi_document(catalog, table)  # made once; the openapi route answers it
    keyring = KeyRing(keys_path(engines.state_dir))
    return Gateway(table, services, options, keyring, metrics)


__all__ = ["EndpointRequest", "Gateway", "GatewayOptions", "build_app", "gateway_options"]
