"""The gateway's route table: every route declared once, and the one lookup that dispatch uses.

A `Route` names what the rest of the gateway needs to know about it: its name (the metrics label),
method, path pattern (Starlette's ``{param}`` syntax, each parameter one path segment), the key
scope it needs (a template over the path parameters, e.g. ``read:{view}``; `PUBLIC` for a route
anyone may call, before any limit), and its handler. A handler is one of two kinds:

* ``raw``: the fast path, plain ASGI. It gets the path parameters, ``receive`` and ``send``, and
  returns the status it answered; no Request object, no Starlette routing. The view lookups use it.
* ``handler``: the Starlette path, a ``Request`` in and a ``Response`` out, for everything else.

`RouteTable.match` finds the route of a method and path; a request no route takes (unknown path,
or a known path with another method) goes to `RouteTable.miss`, which answers as Starlette's router
does (404, 405 with Allow, a redirect to the path with or without its trailing slash) from the same
table. A GET route of the Starlette path also answers HEAD, as Starlette's routes do.
`keel.serve.openapi` documents the table's routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute
from starlette.routing import Router, compile_path, request_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RawHandler = Callable[[dict[str, str], Receive, Send], Awaitable[int]]
RequestHandler = Callable[[Request], Awaitable[Response]]

PUBLIC: None = None  # the scope of a route every client may call, keyed or not


@dataclass(frozen=True)
class Route:
    """One route of the gateway. Exactly one of ``handler`` (Starlette) and ``raw`` (fast ASGI) is set.

    ``timed=False`` only for a raw route that reads no body and whose backend calls carry their own
    timeouts: it skips the request timer (one timer per request is measurable on the hot path).
    """

    name: str
    method: str
    path: str
    scope: str | None
    handler: RequestHandler | None = None
    raw: RawHandler | None = None
    timed: bool = True

    def __post_init__(self) -> None:
        if (self.handler is None) == (self.raw is None):
            raise ValueError(f"route {self.name!r}: give exactly one of handler= and raw=")

    @property
    def fast(self) -> bool:
        """Whether the route takes the raw-ASGI path (no Request object, no Starlette)."""
        return self.raw is not None

    @property
    def public(self) -> bool:
        return self.scope is PUBLIC


class Found(NamedTuple):
    """A route matched: the route, its path parameters, the scope it needs (None when public), and
    the ASGI app that runs a Starlette-path route (a tuple: made once per request, on the hot path)."""

    route: Route
    params: dict[str, str]
    needed: str | None
    app: ASGIApp | None
    direct: RawHandler | None  # an untimed raw route's handler: called without the request timer


class _Entry:
    """A route compiled: its regex, and its scope split so that filling it in is one concatenation
    when the scope ends in its only parameter (``read:{view}``), as the built-in routes' do."""

    __slots__ = ("app", "direct", "regex", "route", "scope_param", "scope_prefix")

    def __init__(self, route: Route) -> None:
        self.route = route
        self.regex = compile_path(route.path)[0]
        self.app = None if route.handler is None else request_response(route.handler)
        self.direct = route.raw if not route.timed else None
        self.scope_prefix, self.scope_param = route.scope, None
        scope = route.scope
        if scope is not None and scope.endswith("}") and scope.count("{") == 1:
            self.scope_prefix, _, param = scope[:-1].partition("{")
            self.scope_param = param

    def found(self, params: dict[str, str]) -> Found:
        scope = self.route.scope
        needed: str | None
        if self.scope_param is not None:
            needed = f"{self.scope_prefix}{params[self.scope_param]}"
        elif scope is not None and "{" in scope:
            needed = scope.format_map(params)
        else:
            needed = scope
        return Found(self.route, params, needed, self.app, self.direct)


@dataclass
class RouteTable:
    """The routes in the order they are tried (the first that matches method and path wins)."""

    routes: Sequence[Route]
    _by_method: dict[str, list[_Entry]] = field(init=False, repr=False)
    public: frozenset[str] = field(init=False)  # paths of the public routes: served before any limit
    miss: ASGIApp = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_method = {}
        starlette_routes = []
        for route in self.routes:
            entry = _Entry(route)
            methods = [route.method]
            if route.handler is not None:
                starlette_routes.append(StarletteRoute(route.path, route.handler, methods=[route.method]))
                if route.method == "GET":
                    methods.append("HEAD")
            for method in methods:
                self._by_method.setdefault(method, []).append(entry)
        self.public = frozenset(r.path for r in self.routes if r.public)
        # what a request no route takes is answered: Starlette's own 404 / 405 / slash redirect
        self.miss = Router(routes=starlette_routes)

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def match(self, method: str, path: str) -> Found | None:
        for entry in self._by_method.get(method, ()):
            m = entry.regex.match(path)
            if m is not None:
                return entry.found(m.groupdict())
        return None


__all__ = ["PUBLIC", "Found", "RawHandler", "RequestHandler", "Route", "RouteTable"]
