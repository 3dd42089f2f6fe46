"""keel's exceptions: one root, and the few categories a caller acts on.

Every engine adapter translates its library's exceptions into these at its boundary
(``raise BackendError(...) from exc``). Messages say what went wrong *and what to do next*.
"""

from __future__ import annotations

from dataclasses import dataclass


class KeelError(Exception):
    """Root of every error keel raises on purpose. The CLI prints these without a traceback."""


class ConfigError(KeelError):
    """keel.toml, a profile, a KEEL_* variable or an engine URL is wrong."""


class UnknownSchemeError(ConfigError):
    """An engine URL names a scheme that no engine of that area serves."""

    def __init__(self, area: str, url: str, known: list[str]) -> None:
        self.area, self.url, self.known = area, url, sorted(known)
        super().__init__(
            f"unknown {area} URL {url!r}: the known schemes are "
            + ", ".join(f"{s}://" for s in self.known)
            + f". Fix the `{area}` entry of the profile in keel.toml or KEEL_{area.upper()}."
        )


class MissingExtraError(ConfigError):
    """An optional engine's library is not installed."""

    def __init__(self, engine: str, extra: str, module: str) -> None:
        super().__init__(
            f"the {engine} engine needs the Python package {module!r}: "
            f"install it with `pip install 'keel-platform[{extra}]'`"
        )


@dataclass(frozen=True)
class Problem:
    """One mistake in a project, pinned to the declaration that makes it."""

    message: str
    file: str = "?"
    line: int = 0
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.line else (f"{self.file}: " if self.file != "?" else "")
        return f"{where}{self.message}" + (f" ({self.hint})" if self.hint else "")


class ProjectError(KeelError):
    """A project's declarations are inconsistent; carries one Problem per mistake."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class NotFoundError(KeelError):
    """A stream, table, view, job, endpoint or key that does not exist was asked for."""


class SchemaError(KeelError):
    """Data does not match the schema it is written against; nothing was written."""


class QueryError(KeelError):
    """A SQL query or filter is not valid; the message quotes the SQL engine's explanation."""


class ValidationError(KeelError):
    """Events failed validation; ``errors`` lists (index, field, message) per bad field."""

    def __init__(self, errors: list[dict[str, object]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"event {e.get('index')}: {e.get('field')}: {e.get('error')}" for e in errors))


class BackendError(KeelError):
    """An engine failed (I/O, network, server). Transient unless a subclass says otherwise."""


class DurabilityError(BackendError):
    """Data could not be made durable (e.g. fsync failed). Nothing after it is acknowledged."""


class CorruptDataError(BackendError):
    """Stored data failed its integrity check; the message names where (stream, partition, offset)."""


class ConflictError(BackendError):
    """Another writer holds what this one needs (a lock, a commit race that cannot be retried)."""


class UntranslatableError(QueryError):
    """A query uses a construct the batch engine's translation cannot carry over; ``constructs`` names each."""

    def __init__(self, constructs: list[str]) -> None:
        self.constructs = constructs
        super().__init__(
            "this query cannot run on Spark: " + "; ".join(constructs)
            + ". Rewrite it with constructs both DuckDB and Spark SQL have, or run the job on DuckDB "
            "(batch = \"duckdb://\")"
        )
