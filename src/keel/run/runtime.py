"""A project at run time: its catalog and the engines its profile names, opened once.

`Runtime` is what the CLI, the gateway, processors and jobs share: `bus`, `lake`, `views`, `batch`
(the engine jobs' SQL runs on, opened only when a job runs SQL), and `ensure()` which creates every declared stream (with its dead-letter stream) and is idempotent.
"""

from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from keel.batch.base import BatchEngine
from keel.bus import Bus, StreamConfig, open_bus
from keel.project.catalog import Catalog
from keel.project.config import Config
from keel.schemes import file_path
from keel.project.declare import Stream, seconds
from keel.engines import Engines
from keel.errors import BackendError, ConfigError, KeelError
from keel.kv import KeyValue, open_kv
from keel.kv.views import Views
from keel.lake import Lake, open_lake
from keel.lake.sql import SqlSession
from keel.project.loading import Project, load_project


class Runtime:
    def __init__(self, project: Project) -> None:
        self.project = project
        self.config: Config = project.config
        self.catalog: Catalog = project.catalog
        self._lock = threading.Lock()

    @classmethod
    def open(cls, root: str | Path = ".", profile: str | None = None, **engines: str) -> Runtime:
        project = load_project(root, profile)
        if engines:
            project = Project(project.config.with_engines(**engines), project.catalog)
        return cls(project)

    @cached_property
    def bus(self) -> Bus:
        # only Kafka acts on the profile's production flag (it warns when topics are not durable)
        options = {"production": self.config.production} if self.config.bus.startswith("kafka://") else {}
        return open_bus(self.config.bus, **options)

    @cached_property
    def lake(self) -> Lake:
        return open_lake(self.config.lake)

    @cached_property
    def kv(self) -> KeyValue:
        return open_kv(self.config.kv)

    @cached_property
    def views(self) -> Views:
        return Views(self.kv, {v.name: seconds(v.ttl) for v in self.catalog.views.values()})

    @cached_property
    def batch(self) -> BatchEngine:
        """The profile's batch engine over the lake, opened on first use: only a job that runs SQL opens
        it, so `keel up` and the read commands never start a Spark session (~15 s) unless a job runs."""
        from keel.batch import open_batch

        jars = self.config.spark_jars
        options = {"jars": file_path(jars)} if jars and self.config.batch.startswith("spark://") else {}
        return open_batch(self.config.batch, self.lake, **options)

    @property
    def state_dir(self) -> Path:
        """Where processors keep their checkpoints (a local folder in every profile for now)."""
        path = file_path(self.config.state)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def engines(self) -> Engines:
        """The bus, lake and views of the profile, opened, and the state folder: what components take."""
        return Engines(bus=self.bus, lake=self.lake, views=self.views, state_dir=self.state_dir)

    def stream(self, name: str) -> Stream:
        from keel.errors import NotFoundError

        try:
            return self.catalog.streams[name]
        except KeyError:
            known = ", ".join(sorted(self.catalog.streams)) or "none"
            raise NotFoundError(f"no stream {name!r} in this project; streams: {known}") from None

    def ensure(self) -> None:
        """Create every declared stream on the bus (idempotent)."""
        for s in self.catalog.streams.values():
            retention = seconds(s.retention)
            self.bus.create_stream(StreamConfig(s.name, s.partitions,
                                                retention_ms=None if retention is None else int(retention * 1000)))

    def open_engines(self) -> None:
        """Open the profile's bus, lake and kv now, in this thread, and create every declared stream.

        What `keel up` does before it says it is up: an engine that cannot be reached (a broker
        down, a missing bucket, wrong credentials) raises here, once, as a ConfigError or
        BackendError naming the engine and its URL, instead of in every component that uses it.
        """
        for area, url, touch in (("bus", self.config.bus, self.ensure), ("lake", self.config.lake, lambda: self.lake),
                                 ("kv", self.config.kv, lambda: self.views)):
            try:
                touch()
            except KeelError as exc:
                kind = ConfigError if isinstance(exc, ConfigError) else BackendError
                where = "" if url in str(exc) else f" ({_redact(url)})"
                raise kind(f"cannot start: the {area}{where} is not usable: {exc}") from exc

    def sql_session(self) -> SqlSession:
        return SqlSession(self.lake)

    def close(self) -> None:
        self.__dict__.pop("engines", None)
        for name in ("batch", "bus", "kv"):
            engine = self.__dict__.pop(name, None)
            if engine is not None:
                engine.close()


def _redact(url: str) -> str:
    """`url` without a password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()
