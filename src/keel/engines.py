"""The engines a profile names, opened: what the components of a running project share.

`Engines` is the seam between `keel.run` (which opens the engines once per process, from the profile)
and the packages that use them (`streaming`, `serve`, `jobs`, `monitor`, `experiments`). A component
takes `Engines` when it uses most of them, or just the one engine it uses; never the whole runtime.
Tests build it directly from the engines they opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING, Protocol

from keel.bus import Bus
from keel.kv.views import Views
from keel.lake import Lake

if TYPE_CHECKING:
    from keel.project.catalog import Catalog
    from keel.project.config import Config


@dataclass(frozen=True)
class Engines:
    bus: Bus
    lake: Lake
    views: Views
    state_dir: Path  # where processors keep their checkpoints (a local folder in every profile for now)


class OnDemand(Protocol):
    """A project whose engines open on first use: what read-only commands (`keel status`, `keel streams`)
    take, so that they can say "not created yet" of an embedded engine without creating its files.
    `keel.run.runtime.Runtime` is one."""

    @property
    def config(self) -> Config: ...
    @property
    def catalog(self) -> Catalog: ...
    @property
    def bus(self) -> Bus: ...
    @property
    def lake(self) -> Lake: ...
    @property
    def views(self) -> Views: ...
