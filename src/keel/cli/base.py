"""What every `keel` command shares: the consoles, the project options, opening the runtime, times."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

if TYPE_CHECKING:
    from keel.run.runtime import Runtime


out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def project_options(command: F) -> F:
    """-p/--project and --profile, on every command that reads a project."""
    command = click.option("--profile", metavar="NAME",
                           help="The keel.toml profile (default: local, or KEEL_PROFILE).")(command)
    return click.option("--project", "-p", type=click.Path(path_type=Path), default=Path("."), metavar="DIR",
                        show_default=True, help="The project folder (holding keel.toml).")(command)


def open_runtime(project: Path, profile: str | None) -> Runtime:
    from keel.run.runtime import Runtime

    return Runtime.open(project, profile)


def iso_time(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> datetime | None:
    """An option's ISO 8601 time, in UTC; a usage error (exit 2) if it is not one."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time (e.g. 2026-12-01 or 2026-12-01T10:00:00Z)",
                                 ctx, param) from None


def minute(iso: str) -> str:
    """An ISO 8601 UTC time to the minute, in words that wrap ("2026-12-01 23:07 UTC")."""
    return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def not_created(what: str) -> None:
    out.print(f"{what} is not created yet (`keel up` creates it)", highlight=False)
