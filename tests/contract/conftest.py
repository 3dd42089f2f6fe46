"""Fixtures of the bus contract suite (tests/contract/test_bus.py): one `bus` per engine.

To run the suite on another engine, add a ``pytest.param("<engine>", marks=...)`` to BUS_ENGINES
and a fixture named ``<engine>_bus_url`` that returns the URL of a fresh bus. Tests use unique
stream and group names, so engines whose server outlives one test (Kafka) need no cleanup.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keel.bus import Bus, open_bus

BUS_ENGINES = [
    pytest.param("file"),
    pytest.param("kafka", marks=pytest.mark.kafka),
]


@pytest.fixture
def file_bus_url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'bus'}"


@pytest.fixture
def kafka_bus_url(kafka_bootstrap: str) -> str:
    # One broker serves the session: a fresh topic and group prefix gives each test a bus of its own.
    return f"{kafka_bootstrap}?topic_prefix=c-{uuid.uuid4().hex[:8]}.&heartbeat.interval.ms=500"


@pytest.fixture(params=BUS_ENGINES)
def bus_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_bus_url")
    return url


@pytest.fixture
def reopen_bus(bus_url: str) -> Iterator[Callable[[], Bus]]:
    """Open another instance of the same bus, as a restarted process would (closed after the test)."""
    opened: list[Bus] = []

    def reopen() -> Bus:
        opened.append(open_bus(bus_url))
        return opened[-1]

    yield reopen
    for b in opened:
        b.close()


@pytest.fixture
def bus(bus_url: str) -> Iterator[Bus]:
    b = open_bus(bus_url)
    yield b
    b.close()


@pytest.fixture
def stream_name() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"
