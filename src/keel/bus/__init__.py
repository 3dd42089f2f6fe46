"""Message bus: one interface (`base.Bus`), the embedded `file://` log and Kafka."""

from __future__ import annotations

from keel.bus.base import Bus, Consumer, StreamConfig, dlq_name
from keel.schemes import open_engine

ENGINES = {
    "file": "keel.bus.file:open_file_bus",
    "kafka": "keel.bus.kafka:open_kafka_bus",
}


def open_bus(url: str, **options: object) -> Bus:
    """Open the bus engine that serves `url` (see ENGINES)."""
    bus: Bus = open_engine("bus", url, ENGINES, **options)
    return bus


__all__ = ["ENGINES", "Bus", "Consumer", "StreamConfig", "dlq_name", "open_bus"]
