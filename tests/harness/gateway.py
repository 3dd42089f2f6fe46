"""The gateway of a test's runtime, built as `keel up` builds it (`keel.run.host`)."""

from __future__ import annotations

import time
from collections.abc import Callable

from keel.run.runtime import Runtime
from keel.serve.app import build_app, gateway_options
from keel.serve.front import Gateway
from keel.serve.limits import GatewayOptions


def options_of(rt: Runtime) -> GatewayOptions:
    """The gateway options `rt`'s profile implies."""
    return gateway_options(rt.config.serve, rt.config.production)


def gateway_of(rt: Runtime, options: GatewayOptions | None = None, clock: Callable[[], float] = time.time) -> Gateway:
    """The gateway of `rt`'s project on its engines; `options` default to the profile's."""
    return build_app(rt.catalog, rt.engines, rt.config.kv, options or options_of(rt), clock)
