"""Small response helpers shared by the gateway's routes and its front door."""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from keel.serve.limits import retry_after

_json = msgspec.json.Encoder()


def json_response(obj: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json.encode(obj), status_code=status, media_type="application/json", headers=headers)


def unavailable(message: str, after: float = 1.0) -> Response:
    """503 with Retry-After: a backend is down or the gateway is over its capacity."""
    return json_response({"error": message}, 503, {"retry-after": retry_after(after).decode()})


def error_body(message: str) -> bytes:
    return _json.encode({"error": message})


__all__ = ["error_body", "json_response", "unavailable"]
