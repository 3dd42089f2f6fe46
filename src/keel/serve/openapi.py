"""The gateway's OpenAPI 3.1 document, generated from the declarations."""

from __future__ import annotations

from typing import Any

import msgspec

from keel.catalog import Catalog

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "errors": {"type": "array"}}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def openapi_document(catalog: Catalog) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {}
    for s in catalog.streams.values():
        (schema,), defs = msgspec.json.schema_components([s.schema], ref_template="#/components/schemas/{name}")
        components.update(defs)
        paths[f"/v1/streams/{s.name}/events"] = {"post": {
            "summary": f"Ingest {s.name} events" + (f": {s.description}" if s.description else ""),
            "operationId": f"ingest_{s.name}",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"oneOf": [schema, {"type": "array", "items": schema}]}},
                "application/x-ndjson": {"schema": {"type": "string"}}}},
            "responses": {"202": {"description": "accepted: durable on the bus", **_json(
                {"type": "object", "properties": {"accepted": {"type": "integer"},
                                                  "event_ids": {"type": "array", "items": {"type": "string"}}}})},
                          "400": {"description": "invalid events; nothing written", **_json(_ERROR)},
                          "413": {"description": "body too large", **_json(_ERROR)}}}}
    for v in catalog.views.values():
        paths[f"/v1/views/{v.name}/{{key}}"] = {"get": {
            "summary": f"Read one value of view {v.name}", "operationId": f"view_{v.name}",
            "parameters": [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the value", **_json({})},
                          "404": {"description": "no value", **_json(_ERROR)}}}}
    for ep in catalog.endpoints.values():
        params = [p.strip("{}") for p in ep.path.split("/") if p.startswith("{")]
        paths.setdefault(ep.path, {})[ep.method.lower()] = {
            "summary": ep.description or ep.name, "operationId": ep.name,
            "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params],
            "responses": {"200": {"description": "result", **_json({"type": "object"})}}}
    for route in ("/healthz", "/readyz"):
        paths[route] = {"get": {"summary": route[1:], "responses": {"200": {"description": "ok", **_json({})}}}}
    return {"openapi": "3.1.0", "info": {"title": "keel gateway", "version": "1"}, "paths": paths,
            "components": {"schemas": components}}
