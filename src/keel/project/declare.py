"""The declarations of a keel project: streams, tables, views, processors, jobs, endpoints,
experiments, metrics and checks.

Each call records where it was made (file and line) so `keel check` can point at it, and registers
itself in the catalog being loaded (see `keel.project.catalog`). Declarations are plain frozen data: the
engines read them; they never run anything themselves.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from keel.project.catalog import register
from keel.project.measures import Agg, Measure
from keel.project.schema import Event

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# The closed vocabularies of declarations. They type the declaring functions for a type checker; a
# user without one who misspells a value still gets `keel check`'s message (keel.project.checks).
Kind = Literal["stream", "table", "view", "processor", "aggregation", "job", "endpoint", "experiment", "metric",
               "check"]
WindowType = Literal["tumbling", "hopping", "session"]
CheckKind = Literal["freshness", "volume"]
MetricAggregate = Literal["conversion", "sum"]
METRIC_AGGREGATES: tuple[MetricAggregate, ...] = ("conversion", "sum")
# An endpoint's method stays a str: it is parsed from the route text, and `keel check` names a bad one.
HTTP_METHODS = ("GET", "POST", "PUT", "DELETE")


def seconds(duration: str | float | int | None) -> float | None:
    """'5m' -> 300.0; numbers are seconds; None stays None. Raises ValueError on nonsense."""
    if duration is None or isinstance(duration, (int, float)):
        return None if duration is None else float(duration)
    m = _DURATION.match(duration)
    if not m:
        raise ValueError(f"bad duration {duration!r}: write a number and a unit, like '500ms', '30s', '5m', '1h', '7d'")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def _where() -> tuple[str, int]:
    """File and line of the user code that called the declaring function."""
    frame = inspect.currentframe()
    here = __file__
    while frame is not None and frame.f_code.co_filename == here:
        frame = frame.f_back
    if frame is None:
        return ("?", 0)
    return (frame.f_code.co_filename, frame.f_lineno)


@dataclass(frozen=True, kw_only=True)
class Declaration:
    name: str
    owner: str = ""
    description: str = ""
    file: str = "?"
    line: int = 0

    kind: Kind = field(init=False)  # each kind of declaration sets its own


# Event times every stream refuses, whatever it declares: before 1900 or from 2200 on. Far inside what
# Arrow, Delta, Spark and pandas (int64 nanoseconds end in 2262) store, so window ends never overflow.
EARLIEST_EVENT_TIME = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_EVENT_TIME = datetime(2200, 1, 1, tzinfo=UTC)  # exclusive
DEFAULT_MAX_FUTURE = 86400.0  # 1 day: clocks disagree, but not by more
# an event's bytes on the bus (its JSON and its key): a Kafka broker on its defaults refuses a record
# batch over 1,048,588 bytes and librdkafka a message over 1,000,000; the rest is left for headers
DEFAULT_MAX_EVENT_BYTES = 900_000
_EARLIEST_MS = int(EARLIEST_EVENT_TIME.timestamp() * 1000)
_LATEST_MS = int(LATEST_EVENT_TIME.timestamp() * 1000) - 1


@dataclass(frozen=True, kw_only=True)
class Stream(Declaration):
    """An event stream. ``max_future`` / ``max_past``: how far (seconds) an event's ``ts`` may be ahead
    of / behind the time the gateway acknowledges it (None: no bound that way); ``max_event_bytes``: the
    largest event on the bus, its JSON and its key. The gateway refuses what is outside with 400; processors dead-letter it."""

    schema: type[Event]
    key: str | None = None
    partitions: int = 1
    retention: str | None = "7d"
    max_future: float | None = DEFAULT_MAX_FUTURE
    max_past: float | None = None
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    kind: Literal["stream"] = field(default="stream", init=False)

    def event_time_bounds(self, now_ms: int) -> tuple[int, int]:
        """(earliest, latest) event time in epoch ms, both inclusive, that this stream accepts at ``now_ms``."""
        lo, hi = _EARLIEST_MS, _LATEST_MS
        if self.max_past is not None:
            lo = max(lo, now_ms - int(self.max_past * 1000))
        if self.max_future is not None:
            hi = min(hi, now_ms + int(self.max_future * 1000))
        return lo, hi


@dataclass(frozen=True, kw_only=True)
class Table(Declaration):
    partition_by: tuple[str, ...] = ()
    kind: Literal["table"] = field(default="table", init=False)


@dataclass(frozen=True, kw_only=True)
class View(Declaration):
    ttl: str | None = None
    kind: Literal["view"] = field(default="view", init=False)


@dataclass(frozen=True)
class Window:
    """An event-time window: tumbling (size), hopping (size, every) or session (gap)."""

    type: WindowType
    size: float
    every: float | None = None


def tumbling(size: str | float) -> Window:
    return Window("tumbling", seconds(size) or 0.0)


def hopping(size: str | float, every: str | float) -> Window:
    return Window("hopping", seconds(size) or 0.0, seconds(every))


def session(gap: str | float) -> Window:
    return Window("session", seconds(gap) or 0.0)


@dataclass(frozen=True)
class Lookup:
    """Enrich each micro-batch from a view before the processor's function: the view's value for
    the key in column `on` (fields `fields`, or all), as columns named `prefix + field`."""

    view: str
    on: str
    fields: tuple[str, ...] = ()
    prefix: str = ""


def lookup(view: View | str, *, on: str, fields: list[str] | tuple[str, ...] = (), prefix: str = "") -> Lookup:
    return Lookup(view if isinstance(view, str) else view.name, on, tuple(fields), prefix)


@dataclass(frozen=True, kw_only=True)
class Processor(Declaration):
    """A stream processor. `transform` (batch DataFrame -> DataFrame) is None for a plain landing.

    With `state_key`, it is stateful: `transform(batch, state)` also gets a `KeyedState` keyed by
    that column, checkpointed with its offsets (see `keel.streaming.state`)."""

    stream: Stream
    into: tuple[Table | View, ...]
    transform: Callable[..., Any] | None = None
    state_key: str | None = None
    lookups: tuple[Lookup, ...] = ()
    kind: Literal["processor"] = field(default="processor", init=False)


@dataclass(frozen=True, kw_only=True)
class Aggregation(Declaration):
    """A keyed aggregation over event-time windows; `measures` maps output column -> Measure."""

    stream: Stream
    by: str
    window: Window
    into: tuple[Table | View, ...]
    measures: dict[str, Measure]
    lateness: float = 0.0
    top: int | None = None  # keep the top-N keys per window in each view (ranked by the first measure)
    kind: Literal["aggregation"] = field(default="aggregation", init=False)


@dataclass(frozen=True, kw_only=True)
class Job(Declaration):
    """A batch job over lake tables. `run(ctx)` returns SQL text, an Arrow table or a Polars frame."""

    run: Callable[..., Any]
    schedule: str | None
    inputs: tuple[str, ...]
    output: Table | View | None
    key: str | None = None  # for a view output: the column whose value is the view key
    retries: int = 2
    kind: Literal["job"] = field(default="job", init=False)


@dataclass(frozen=True, kw_only=True)
class Experiment(Declaration):
    variants: dict[str, float]
    unit: str
    metrics: tuple[str, ...] = ()
    control: str = ""
    kind: Literal["experiment"] = field(default="experiment", init=False)


@dataclass(frozen=True, kw_only=True)
class Metric(Declaration):
    """A per-unit outcome read from a lake table: `conversion` (1 if any row) or `sum` of `value`."""

    table: str
    unit: str
    aggregate: MetricAggregate = "conversion"
    value: str | None = None
    kind: Literal["metric"] = field(default="metric", init=False)


@dataclass(frozen=True, kw_only=True)
class Endpoint(Declaration):
    method: str
    path: str
    handler: Callable[..., Any]
    experiment: Experiment | None = None
    reads: tuple[str, ...] = ()  # views the handler reads (for lineage and docs)
    fallback: Callable[..., Any] | None = None  # answers (without a variant) when the handler's backends fail
    kind: Literal["endpoint"] = field(default="endpoint", init=False)


@dataclass(frozen=True, kw_only=True)
class Check(Declaration):
    """Freshness (newest row younger than `within`) or volume (at least `min_rows` within `within`)."""

    check: CheckKind
    table: str
    within: float
    min_rows: int = 0
    kind: Literal["check"] = field(default="check", init=False)


# Every concrete declaration: a catalog keeps each kind apart, picked by its `kind`.
AnyDeclaration = Stream | Table | View | Processor | Aggregation | Job | Endpoint | Experiment | Metric | Check

D = TypeVar("D", bound=AnyDeclaration)


def _declare(cls: type[D], **kw: Any) -> D:
    file, line = _where()
    obj = cls(file=file, line=line, **kw)
    register(obj)
    return obj


def stream(name: str, schema: type[Event], *, key: str | None = None, partitions: int = 1,
           retention: str | None = "7d", max_future: str | float | None = "1d", max_past: str | float | None = None,
           max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, owner: str = "", description: str = "") -> Stream:
    """Declare an event stream on the bus; events are validated against `schema` at ingest, and an event
    whose ``ts`` is more than `max_future` ahead of (or `max_past` behind) the ack time, or whose JSON is
    over `max_event_bytes`, is refused."""
    future, past = seconds(max_future), seconds(max_past)
    for option, value in (("max_future", future), ("max_past", past)):
        if value is not None and value < 0:
            raise ValueError(f"{option} must be a duration of 0 or more (like '1d'), or None for no bound")
    if max_event_bytes < 1:
        raise ValueError(f"max_event_bytes must be a positive number of bytes, not {max_event_bytes}")
    return _declare(Stream, name=name, schema=schema, key=key, partitions=partitions, retention=retention,
                    max_future=future, max_past=past, max_event_bytes=max_event_bytes, owner=owner,
                    description=description)


def table(name: str, *, partition_by: tuple[str, ...] | list[str] = (), owner: str = "", description: str = "") -> Table:
    """Declare a lake table. Its schema comes from what is written into it."""
    return _declare(Table, name=name, partition_by=tuple(partition_by), owner=owner, description=description)


def view(name: str, *, ttl: str | None = None, owner: str = "", description: str = "") -> View:
    """Declare an online view: keys to JSON values in fast storage, served by the gateway."""
    return _declare(View, name=name, ttl=ttl, owner=owner, description=description)


def land(source: Stream, into: Table, *, name: str | None = None, owner: str = "", description: str = "") -> Processor:
    """Land every event of `source` in the lake table `into`, exactly once."""
    return _declare(Processor, name=name or f"land_{into.name}", stream=source, into=(into,), transform=None,
                    owner=owner or source.owner, description=description or f"lands {source.name} in {into.name}")


def processor(source: Stream, *, into: list[Table | View] | Table | View, name: str | None = None,
              enrich: list[Lookup] | tuple[Lookup, ...] = (), owner: str = "",
              description: str = "") -> Callable[[Callable[..., Any]], Processor]:
    """Declare a stateless processor: `fn(batch: polars.DataFrame) -> polars.DataFrame` per micro-batch.
    `enrich` adds columns looked up in views (`keel.lookup`) to the batch first."""
    targets = tuple(into) if isinstance(into, list) else (into,)

    def wrap(fn: Callable[..., Any]) -> Processor:
        return _declare(Processor, name=name or fn.__name__, stream=source, into=targets, transform=fn,
                        lookups=tuple(enrich), owner=owner or source.owner,
                        description=description or (fn.__doc__ or "").strip())

    return wrap


def stateful(source: Stream, *, key: str, into: list[Table | View] | Table | View, name: str | None = None,
             enrich: list[Lookup] | tuple[Lookup, ...] = (), owner: str = "",
             description: str = "") -> Callable[[Callable[..., Any]], Processor]:
    """Declare a stateful processor: `fn(batch, state) -> polars.DataFrame`, where `state` is a
    `KeyedState` keyed by column `key`, restored after a crash consistently with the offsets."""
    targets = tuple(into) if isinstance(into, list) else (into,)

    def wrap(fn: Callable[..., Any]) -> Processor:
        return _declare(Processor, name=name or fn.__name__, stream=source, into=targets, transform=fn,
                        state_key=key, lookups=tuple(enrich), owner=owner or source.owner,
                        description=description or (fn.__doc__ or "").strip())

    return wrap


def aggregate(source: Stream, *, by: str, window: Window, into: list[Table | View] | Table | View,
              lateness: str | float = 0, top: int | None = None, name: str | None = None, owner: str = "",
              description: str = "") -> Callable[[Callable[[Agg], Mapping[str, Measure]]], Aggregation]:
    """Declare a windowed aggregation. The function receives an `Agg` builder and returns
    a dict of output column -> measure, e.g. ``{"views": w.count()}``."""
    targets = tuple(into) if isinstance(into, list) else (into,)

    def wrap(fn: Callable[[Agg], Mapping[str, Measure]]) -> Aggregation:
        return _declare(Aggregation, name=name or fn.__name__, stream=source, by=by, window=window, into=targets,
                        measures=dict(fn(Agg())), lateness=seconds(lateness) or 0.0, top=top,
                        owner=owner or source.owner, description=description or (fn.__doc__ or "").strip())

    return wrap


def job(*, schedule: str | None, inputs: list[str] | tuple[str, ...] = (), output: Table | View | None = None,
        key: str | None = None, retries: int = 2, name: str | None = None, owner: str = "",
        description: str = "") -> Callable[[Callable[..., Any]], Job]:
    """Declare a batch job over lake tables, run by the scheduler on a cron `schedule` (UTC)."""

    def wrap(fn: Callable[..., Any]) -> Job:
        return _declare(Job, name=name or fn.__name__, run=fn, schedule=schedule, inputs=tuple(inputs),
                        output=output, key=key, retries=retries, owner=owner,
                        description=description or (fn.__doc__ or "").strip())

    return wrap


def experiment(name: str, *, variants: dict[str, float], unit: str, metrics: list[str] | tuple[str, ...] = (),
               control: str | None = None, owner: str = "", description: str = "") -> Experiment:
    """Declare an A/B experiment. The first variant is the control unless `control` is given."""
    return _declare(Experiment, name=name, variants=dict(variants), unit=unit, metrics=tuple(metrics),
                    control=control or next(iter(variants), ""), owner=owner, description=description)


def metric(name: str, *, table: str, unit: str, aggregate: MetricAggregate = "conversion", value: str | None = None,
           owner: str = "", description: str = "") -> Metric:
    """Declare a per-unit metric over a lake table, for experiments."""
    return _declare(Metric, name=name, table=table, unit=unit, aggregate=aggregate, value=value,
                    owner=owner, description=description)


def endpoint(route: str, *, experiment: Experiment | None = None, reads: list[str] | tuple[str, ...] = (),
             fallback: Callable[..., Any] | None = None, name: str | None = None, owner: str = "",
             description: str = "") -> Callable[[Callable[..., Any]], Endpoint]:
    """Declare an HTTP endpoint, e.g. ``"GET /recommend/{user_id}"``. The handler gets a `Request`
    and, under an experiment, the unit's variant. ``fallback(req)`` answers instead when the handler
    cannot reach what it reads (kv down, breaker open) or runs past the gateway's endpoint timeout."""
    method, _, path = route.strip().partition(" ")

    def wrap(fn: Callable[..., Any]) -> Endpoint:
        return _declare(Endpoint, name=name or fn.__name__, method=method.upper(), path=path.strip(), handler=fn,
                        experiment=experiment, reads=tuple(reads), fallback=fallback, owner=owner,
                        description=description or (fn.__doc__ or "").strip())

    return wrap


def freshness(table: str, *, within: str, name: str | None = None, owner: str = "", description: str = "") -> Check:
    """Check that `table`'s newest event is younger than `within`."""
    return _declare(Check, name=name or f"{table}_fresh", check="freshness", table=table,
                    within=seconds(within) or 0.0, owner=owner, description=description)


def volume(table: str, *, at_least: int, within: str, name: str | None = None, owner: str = "",
           description: str = "") -> Check:
    """Check that `table` received at least `at_least` rows within the last `within`."""
    return _declare(Check, name=name or f"{table}_volume", check="volume", table=table, min_rows=at_least,
                    within=seconds(within) or 0.0, owner=owner, description=description)
