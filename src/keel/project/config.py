"""Configuration: read once from keel.toml profiles and KEEL_* variables, then frozen.

Only this module reads files or the environment for settings. Each component is handed
its own piece (a URL, a ServeConfig), never the whole config.

keel.toml::

    [project]
    name = "shop"
    module = "shop.pipelines"      # the module that declares streams, tables, views, ...

    [profiles.local]               # the default profile
    bus  = "file://.keel/bus"
    lake = "file://.keel/lake"
    kv   = "file://.keel/kv.db"

    [profiles.prod]
    production = true              # default: true for any profile but local, test and dev
    image = "registry/shop:1.0"    # `keel deploy airflow`: the image its Kubernetes pods run (keel + the project)
    namespace = "data"             # ... and their namespace (default: "default")

Variables override the chosen profile: KEEL_PROFILE, KEEL_BUS, KEEL_LAKE, KEEL_KV, KEEL_BATCH,
KEEL_SCHEDULER, KEEL_STATE, KEEL_SPARK_JARS, KEEL_HOST, KEEL_PORT, KEEL_MAX_INFLIGHT_BYTES, KEEL_MAX_QUEUE_SECONDS.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from keel.errors import ConfigError

DEFAULT_PROFILE = "local"
LOCAL_DEFAULTS = {
    "bus": "file://.keel/bus",
    "lake": "file://.keel/lake",
    "kv": "file://.keel/kv.db",
    "batch": "local://",
    "scheduler": "embedded://",
    "state": "file://.keel/state",
}
_ENGINE_KEYS = tuple(LOCAL_DEFAULTS)
_GATEWAY_LIMITS = {"max_inflight_bytes": int, "max_queue_seconds": float, "max_concurrency": int}  # ServeConfig fields a profile may set
_KNOWN_PROFILE_KEYS = set(_ENGINE_KEYS) | {"host", "port", "production", "spark_jars", "image", "namespace"} | set(_GATEWAY_LIMITS)


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 8 * 1024 * 1024
    max_inflight_bytes: int = 64 * 1024 * 1024  # request bodies the gateway holds at once; beyond: 503
    max_queue_seconds: float = 0.1  # a request that waited longer before being served: 503
    max_concurrency: int = 64  # requests in flight at once; beyond: 503 from the HTTP protocol, before any work


@dataclass(frozen=True)
class Config:
    root: Path
    project_name: str
    module: str
    profile: str
    bus: str
    lake: str
    kv: str
    batch: str
    scheduler: str
    state: str
    production: bool = False
    # the folder of the Delta jars a Spark batch engine loads (scripts/install-spark.sh's .cache/spark/jars),
    # a file:// URL; None: they are on the cluster's class path already
    spark_jars: str | None = None
    image: str = ""  # the container image of `keel deploy airflow`'s pods (production profiles)
    namespace: str = "default"  # their Kubernetes namespace
    serve: ServeConfig = field(default_factory=ServeConfig)

    def with_engines(self, **urls: str) -> Config:
        resolved: dict[str, Any] = {k: resolve_url(v, self.root) for k, v in urls.items()}
        return replace(self, **resolved)


def resolve_url(url: str, root: Path) -> str:
    """Make a relative `file://` URL absolute against the project root; leave others alone."""
    if not url.startswith("file://"):
        if "://" not in url:
            raise ConfigError(f"engine URL {url!r} has no scheme: write it like 'file://.keel/bus' or 'kafka://host:9092'")
        return url
    path = Path(url[len("file://"):])
    if not path.is_absolute():
        path = (root / path).resolve()
    return f"file://{path}"


def load_config(root: Path | str, profile: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read `root/keel.toml` and the KEEL_* variables of `env` (default: os.environ) once."""
    env = os.environ if env is None else env
    root = Path(root).resolve()
    path = root / "keel.toml"
    if not path.exists():
        raise ConfigError(f"no keel.toml in {root}: run `keel init` there, or pass --project DIR of a keel project")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax at that line") from exc
    project = doc.get("project", {})
    name = str(project.get("name", root.name))
    module = project.get("module")
    if not module:
        raise ConfigError(f"{path}: [project] needs `module = \"...\"`, the Python module holding the declarations")
    profile = profile or env.get("KEEL_PROFILE") or DEFAULT_PROFILE
    profiles = doc.get("profiles", {})
    if profile not in profiles and profile != DEFAULT_PROFILE:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(f"{path}: no profile {profile!r} (profiles: {known}); add [profiles.{profile}] or pick another")
    chosen = dict(profiles.get(profile, {}))
    unknown = set(chosen) - _KNOWN_PROFILE_KEYS
    if unknown:
        raise ConfigError(f"{path}: [profiles.{profile}] has unknown keys {sorted(unknown)}; known: {sorted(_KNOWN_PROFILE_KEYS)}")
    settings = {**LOCAL_DEFAULTS, **{k: str(v) for k, v in chosen.items() if k in _ENGINE_KEYS}}
    for key in _ENGINE_KEYS:
        if f"KEEL_{key.upper()}" in env:
            settings[key] = env[f"KEEL_{key.upper()}"]
    host = env.get("KEEL_HOST", str(chosen.get("host", ServeConfig.host)))
    port_text = env.get("KEEL_PORT", str(chosen.get("port", ServeConfig.port)))
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"port {port_text!r} is not a number: set KEEL_PORT or `port` in the profile to e.g. 8000") from None
    limits: dict[str, Any] = {}
    for key, kind in _GATEWAY_LIMITS.items():
        text = env.get(f"KEEL_{key.upper()}", chosen.get(key))
        if text is None:
            continue
        try:
            limits[key] = kind(text)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} = {text!r} is not a number: set it in [profiles.{profile}] or KEEL_{key.upper()}, "
                              f"e.g. {getattr(ServeConfig, key)}") from None
        if limits[key] <= 0:
            raise ConfigError(f"{key} must be above 0 (got {text!r}); the default is {getattr(ServeConfig, key)}")
    jars = env.get("KEEL_SPARK_JARS", chosen.get("spark_jars"))
    return Config(
        root=root,
        spark_jars=None if not jars else resolve_url(f"file://{jars}", root),
        project_name=name,
        module=str(module),
        profile=profile,
        production=bool(chosen.get("production", profile not in ("local", "test", "dev"))),
        image=str(chosen.get("image", "")),
        namespace=str(chosen.get("namespace", "default")),
        serve=ServeConfig(host=host, port=port, **limits),
        **{k: resolve_url(v, root) for k, v in settings.items()},
    )
