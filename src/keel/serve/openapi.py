"""The gateway's OpenAPI 3.1 document, generated from the declarations.

Every operation but /healthz, /readyz and /openapi.json requires an API key (``Authorization:
Bearer`` or ``X-API-Key``) and documents the front door's answers: 401, 403, 413, 429, 503, 504.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
import msgspec.inspect

from keel.project.catalog import Catalog
from keel.project.declare import Endpoint, Stream, View
from keel.serve.ingest import storable_schema
from keel.serve.routes import Route

Json = dict[str, Any]  # a JSON object of the document

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "errors": {"type": "array"}}}
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
_SCHEMES = {"bearer": {"type": "http", "scheme": "bearer", "description": "a key from `keel keys create`"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds to wait before retrying"}}


def _json(schema: Json) -> Json:
    return {"content": {"application/json": {"schema": schema}}}


def _guarded(responses: Json, body: bool = False) -> Json:
    """The answers every protected operation may give besides its own."""
    out = {
        **responses,
        "401": {"description": "no API key, or not a valid one", **_json(_ERROR)},
        "403": {"description": "the key lacks the scope this operation needs", **_json(_ERROR)},
        "429": {"description": "the key is over its rate limit", "headers": _RETRY_AFTER, **_json(_ERROR)},
        "503": {"description": "over capacity, or a backend is unavailable", "headers": _RETRY_AFTER,
                **_json(_ERROR)},
        "504": {"description": "not completed within the request time limit", **_json(_ERROR)},
    }
    if body:
        out["413"] = {"description": "body too large", **_json(_ERROR)}
    return out


def _key_param() -> Json:
    return {"name": "key", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[^/]+$"}}


def _date_time_formats(struct: type, schema: Json) -> None:
    """Mark datetime fields ``format: date-time``: msgspec's schema says only "string", which let clients
    (and schemathesis) believe any string is a valid event time; ingest requires RFC 3339."""
    info = msgspec.inspect.type_info(struct)
    for f in getattr(info, "fields", ()):
        types = f.type.types if isinstance(f.type, msgspec.inspect.UnionType) else (f.type,)
        if any(isinstance(t, msgspec.inspect.DateTimeType) for t in types):
            prop = schema.get("properties", {}).get(f.encode_name, {})
            for alt in prop.get("anyOf", [prop]):
                if alt.get("type") == "string":
                    alt["format"] = "date-time"
                    if f.encode_name == "ts":  # the window around the ack time has no JSON Schema keyword
                        alt["description"] = ("event time: from 1900-01-01 to before 2200-01-01, and within the "
                                              "stream's max_future (default 1 day) ahead of the ack time")


def _ingest(s: Stream, components: Json) -> Json:
    # the schema ingest validates against (ints bounded to 64 bits), so clients see the same bounds
    (schema,), defs = msgspec.json.schema_components([storable_schema(s.schema)],
                                                     ref_template="#/components/schemas/{name}")
    components.update(defs)
    _date_time_formats(s.schema, components[s.schema.__name__])
    return {
        "summary": f"Ingest {s.name} events" + (f": {s.description}" if s.description else ""),
        "operationId": f"ingest_{s.name}", "security": _SECURITY,
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"oneOf": [schema, {"type": "array", "items": schema, "minItems": 1}]}},
            "application/x-ndjson": {"schema": {"type": "string"}}}},
        "responses": _guarded({
            "202": {"description": "accepted: durable on the bus", **_json(
                {"type": "object", "properties": {"accepted": {"type": "integer"},
                                                  "event_ids": {"type": "array", "items": {"type": "string"}}}})},
            "400": {"description": "invalid events; nothing written", **_json(_ERROR)}}, body=True)}


def _view_one(v: View) -> Json:
    return {"summary": f"Read one value of view {v.name}", "operationId": f"view_{v.name}", "security": _SECURITY,
            "parameters": [_key_param()],
            "responses": _guarded({"200": {"description": "the value", **_json({})},
                                   "404": {"description": "no value", **_json(_ERROR)}})}


def _view_many(v: View) -> Json:
    return {"summary": f"Read many values of view {v.name}", "operationId": f"views_{v.name}", "security": _SECURITY,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["keys"], "additionalProperties": False,
                "properties": {"keys": {"type": "array", "items": {"type": "string"}, "maxItems": 1000}}}}}},
            "responses": _guarded({
                "200": {"description": "each key's value, null when absent", **_json(
                    {"type": "object", "properties": {"values": {"type": "object"}}})},
                "400": {"description": "not a {\"keys\": [...]} body", **_json(_ERROR)}}, body=True)}


def _endpoint(ep: Endpoint) -> Json:
    params = [p.strip("{}") for p in ep.path.split("/") if p.startswith("{")]
    responses: Json = {"200": {"description": "result", **_json({"type": "object"})}}
    if ep.experiment is not None:
        responses["400"] = {"description": f"no {ep.experiment.unit} to assign a variant", **_json(_ERROR)}
    return {"summary": ep.description or ep.name, "operationId": ep.name, "security": _SECURITY,
            "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string",
                                                                                  "pattern": "^[^/]+$"}}
                           for p in params],
            "responses": _guarded(responses)}


def _probe(name: str) -> Json:
    return {"summary": name, "operationId": name, "security": [],
            "responses": {"200": {"description": "ok", **_json({})},
                          "503": {"description": "not ready", "headers": _RETRY_AFTER, **_json({})}}}


def openapi_document(catalog: Catalog, routes: Iterable[Route]) -> Json:
    """The document of the gateway's route table: one operation per stream, view and endpoint of
    `catalog` for the routes that serve them, and the probes; /metrics and /openapi.json are not
    documented. Paths are listed streams, views, endpoints, probes (in declaration order)."""
    components: Json = {}
    # (group, position in the group, order in the table) -> (path, method, operation)
    operations: dict[tuple[int, int, int], tuple[str, str, Json]] = {}
    for order, route in enumerate(routes):
        method = route.method.lower()
        if route.scope is not None and route.scope.startswith("call:"):
            name = route.scope[5:]
            i, ep = next((i, ep) for i, ep in enumerate(catalog.endpoints.values()) if ep.name == name)
            operations[(2, i, order)] = (ep.path, method, _endpoint(ep))
        elif route.name == "ingest":
            for i, s in enumerate(catalog.streams.values()):
                operations[(0, i, order)] = (route.path.replace("{stream}", s.name), method, _ingest(s, components))
        elif route.name in ("view", "views"):
            document = _view_one if route.name == "view" else _view_many
            for i, v in enumerate(catalog.views.values()):
                operations[(1, i, order)] = (route.path.replace("{view}", v.name), method, document(v))
        elif route.name in ("healthz", "readyz"):
            operations[(3, 0, order)] = (route.path, method, _probe(route.name))
    paths: Json = {}
    for key in sorted(operations):
        path, method, operation = operations[key]
        paths.setdefault(path, {})[method] = operation
    return {"openapi": "3.1.0", "info": {"title": "keel gateway", "version": "1"}, "paths": paths,
            "components": {"schemas": components, "securitySchemes": _SCHEMES}, "security": _SECURITY}
