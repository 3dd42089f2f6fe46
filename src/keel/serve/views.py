"""The view lookup routes, in raw ASGI: the gateway's hot path.

``GET /v1/views/{view}/{key}`` answers the stored JSON bytes as they are; ``POST /v1/views/{view}``
with ``{"keys": [...]}`` answers ``{"values": {key: value-or-null}}`` with each stored value spliced
in unparsed (`msgspec.Raw`). Both go through `Services.read`: one coalesced kv read under the kv
backend's breaker, retry budget and timeout. No router, no Request object, no JSON decode of values:
measured in benchmarks/RESULTS.md ("Serving"), these are what the throughput was lost to.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from keel.errors import BackendError
from keel.serve.limits import retry_after
from keel.serve.resilience import CircuitOpenError
from keel.serve.responses import error_body
from keel.serve.routes import Receive, Send

Read = Callable[[list[str]], Awaitable[list[bytes | None]]]

MAX_KEYS = 1000  # keys per batch lookup
_JSON = (b"content-type", b"application/json")


class _Keys(msgspec.Struct, forbid_unknown_fields=True):
    keys: list[str]


_keys_body = msgspec.json.Decoder(_Keys)
_encode = msgspec.json.Encoder().encode


async def answer(send: Send, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()) -> int:
    await send({"type": "http.response.start", "status": status,
                "headers": [_JSON, (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
    return status


async def error(send: Send, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> int:
    return await answer(send, status, error_body(message), headers)


async def _unavailable(send: Send, exc: BackendError) -> int:
    after = exc.retry_after if isinstance(exc, CircuitOpenError) else 1.0
    return await error(send, 503, str(exc), ((b"retry-after", retry_after(after)),))


class ViewRoutes:
    """The two view lookup routes, as raw handlers of the route table (`keel.serve.routes.RawHandler`):
    ``one`` for ``GET /v1/views/{view}/{key}``, ``many`` for ``POST /v1/views/{view}``, reading
    through ``read`` the views named in ``views``; ``limit`` bounds the batch form's body."""

    __slots__ = ("limit", "read", "views")

    def __init__(self, read: Read, views: set[str], limit: int) -> None:
        self.read, self.views, self.limit = read, views, limit

    async def one(self, params: dict[str, str], receive: Receive, send: Send) -> int:
        view, key = params["view"], params["key"]
        if view not in self.views:
            return await error(send, 404, f"no view {view!r}; views: {sorted(self.views)}")
        try:
            (raw,) = await self.read([f"{view}/{key}"])  # keel.kv.views stores a view's values under "<view>/<key>"
        except BackendError as exc:
            return await _unavailable(send, exc)
        if raw is None:
            return await error(send, 404, f"no value for key {key!r} in view {view!r}")
        return await answer(send, 200, raw)

    async def many(self, params: dict[str, str], receive: Receive, send: Send) -> int:
        view, limit = params["view"], self.limit
        if view not in self.views:
            return await error(send, 404, f"no view {view!r}; views: {sorted(self.views)}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return 499  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await error(send, 413, f"body exceeds the {limit}-byte limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        try:
            keys = _keys_body.decode(b"".join(chunks)).keys
        except (msgspec.DecodeError, msgspec.ValidationError):
            return await error(send, 400, 'send {"keys": ["k1", "k2", ...]}')
        if len(keys) > MAX_KEYS:
            return await error(send, 400, f"{len(keys)} keys in one lookup; at most {MAX_KEYS}")
        try:
            raws = await self.read([f"{view}/{k}" for k in keys]) if keys else []
        except BackendError as exc:
            return await _unavailable(send, exc)
        values = {k: (None if r is None else msgspec.Raw(r)) for k, r in zip(keys, raws)}
        return await answer(send, 200, _encode({"values": values}))


__all__ = ["MAX_KEYS", "ViewRoutes", "answer", "error"]
