"""Picking an engine by URL scheme: the one mechanism behind every area's scheme table."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any
from pathlib import Path
from urllib.parse import urlsplit

from keel.errors import ConfigError, MissingExtraError, UnknownSchemeError


def scheme_of(url: str) -> str:
    try:
        return urlsplit(url).scheme
    except ValueError:  # a bracketed address that is no IPv6 one, like Spark's spark://local[2]
        return url.partition("://")[0] if "://" in url else ""


def file_path(url: str) -> Path:
    """The local path of a `file://` URL (as the profile config resolves them)."""
    if not url.startswith("file://"):
        raise ConfigError(f"expected a file:// URL, got {url!r}")
    return Path(url[len("file://"):])


def open_engine(area: str, url: str, table: Mapping[str, str], **options: Any) -> Any:
    """Open the engine that `table` maps `url`'s scheme to.

    `table` maps a scheme to "module:factory"; the module is imported only now, so an
    engine whose library is missing fails here with an install hint, not at import of keel.
    """
    scheme = scheme_of(url)
    target = table.get(scheme)
    if target is None:
        raise UnknownSchemeError(area, url, list(table))
    module_name, _, factory_name = target.partition(":")
    module = importlib.import_module(module_name)
    factory: Callable[..., Any] = getattr(module, factory_name)
    return factory(url, **options)


def require(module: str, engine: str, extra: str) -> Any:
    """Import an optional engine library or fail with the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(engine, extra, module) from exc
