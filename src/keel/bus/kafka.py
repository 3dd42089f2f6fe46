"""The ``kafka://`` bus engine: keel streams as Kafka topics, through confluent-kafka (librdkafka).

``kafka://host1:9092,host2:9092`` names the bootstrap brokers. One keel record is one Kafka
message: the value bytes as given (JSON from the gateway, so any Kafka client reads it), the key
bytes, the ``headers`` map as Kafka headers and the record timestamp as the message timestamp
(CreateTime). Kafka differs from ``file://`` in two corners: a timestamp of exactly 0 ms means
"now" to librdkafka, and timestamps before 1970 or beyond the topic's
``message.timestamp.after.max.ms`` (1 hour by default) are refused with ``SchemaError``.

Keys are placed as the Java clients place them (``murmur2``, see ``_kafka_partitioner``), so a key
keeps one partition whether keel, a Java producer or Kafka Streams writes it; keyless records go
round-robin. keel computes each record's partition itself and passes it to librdkafka.

Durability: the producer is idempotent with ``acks=all``; ``produce`` returns only after every
message of the batch has its delivery report, and raises ``BackendError`` (acknowledging nothing)
if any report is an error. How durable "all" is depends on the topic's replication factor and
``min.insync.replicas``: with ``production=True`` keel warns (``KafkaDurabilityWarning``) about a
topic that cannot keep an acknowledged event through the loss of a broker.

Options of ``open_kafka_bus``:
* ``topic_prefix``: prepended to every topic and consumer-group name (isolates tenants and tests);
* ``production``: check durability settings and warn;
* ``replication_factor``: for topics keel creates (default: the broker's ``default.replication.factor``);
* ``delivery_timeout_ms``: how long the producer retries (through broker restarts) before ``produce`` fails;
* ``admin_timeout_ms``: how long a metadata, offsets or group request waits for the brokers before it
  raises ``BackendError`` (group lookups ask again within it while a restarted broker loads its groups);
* ``config``: extra librdkafka settings (security, SASL, ...) for every client.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from keel.bus._kafka_consumer import KafkaConsumer, translate
from keel.bus._kafka_partitioner import kafka_partitions, murmur2
from keel.bus._kafka_producer import Sender
from keel.bus.base import (
    PartitionInfo,
    Produced,
    StreamConfig,
    StreamInfo,
    conform_produce,
    dlq_name,
)
from keel.schemes import require
from keel.errors import (
    BackendError,
    ConfigError,
    ConflictError,
    NotFoundError,
    SchemaError,
)

__all__ = ["KafkaBus", "KafkaDurabilityWarning", "kafka_partitions", "murmur2", "open_kafka_bus"]

log = logging.getLogger("keel.bus.kafka")

_ATTEMPT = 5.0  # seconds one group lookup waits before it is asked again
_INTERNAL = "__"
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class KafkaDurabilityWarning(UserWarning):
    """A topic's replication settings cannot guarantee that an acknowledged event survives a broker loss."""


def _flag(text: str) -> bool:
    if text.lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError(text)
    return text.lower() in ("1", "true", "yes")


_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "topic_prefix": str, "production": _flag, "replication_factor": int, "delivery_timeout_ms": int,
    "admin_timeout_ms": int,
}


def open_kafka_bus(url: str, **options: Any) -> KafkaBus:
    """Open the Kafka engine for ``kafka://host:port[,host:port...][?option=value&...]``.

    Query parameters set the options of the module docstring (``topic_prefix=shop.``); a
    parameter with a dot is a librdkafka setting (``security.protocol=SSL``). Keyword options win.
    """
    require("confluent_kafka", "kafka", "kafka")
    parts = urlsplit(url)
    bootstrap = parts.netloc
    if parts.scheme != "kafka" or not bootstrap:
        raise ConfigError(f"bus URL {url!r} names no broker: write it like 'kafka://broker-1:9092,broker-2:9092'")
    from_url: dict[str, Any] = {}
    client_config: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if "." in key:
            client_config[key] = value
        elif key in _URL_OPTIONS:
            try:
                from_url[key] = _URL_OPTIONS[key](value)
            except ValueError as exc:
                raise ConfigError(f"bus URL {url!r}: {key}={value!r} is not valid") from exc
        else:
            raise ConfigError(f"bus URL {url!r}: unknown option {key!r}; known: {sorted(_URL_OPTIONS)} or librdkafka settings (with a dot)")
    merged = {**from_url, **options}
    merged["config"] = {**client_config, **(options.get("config") or {})}
    return KafkaBus(bootstrap, **merged)


class KafkaBus:
    """keel's Bus on a Kafka cluster (see ``keel.bus.base.Bus`` for the contract)."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topic_prefix: str = "",
        production: bool = False,
        replication_factor: int | None = None,
        delivery_timeout_ms: int = 30_000,
        admin_timeout_ms: int = 30_000,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        ck = require("confluent_kafka", "kafka", "kafka")
        admin_mod = require("confluent_kafka.admin", "kafka", "kafka")
        self._ck, self._admin_mod = ck, admin_mod
        self.prefix = topic_prefix
        self.production = production
        self.replication_factor = replication_factor
        self._timeout = admin_timeout_ms / 1000
        self._common: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": log, **(config or {})}
        self._admin = admin_mod.AdminClient(dict(self._common))
        self._sender = Sender(ck, {
            "linger.ms": 5,
            "queue.buffering.max.messages": 500_000,
            **self._common,  # the user's settings may tune the above, never the durability below
            "enable.idempotence": True,
            "acks": "all",
            "max.in.flight.requests.per.connection": min(5, int((config or {}).get("max.in.flight.requests.per.connection", 5))),
            "delivery.timeout.ms": delivery_timeout_ms,
        }, delivery_timeout_ms)
        self._round_robin_lock = threading.Lock()
        self._partitions: dict[str, int] = {}
        self._round_robin: dict[str, int] = {}
        self._timestamp_limits: dict[str, tuple[int, int]] = {}
        self._consumers: list[KafkaConsumer] = []

    # -- names ---------------------------------------------------------------------------------

    def topic(self, stream: str) -> str:
        name = self.prefix + stream
        if not _TOPIC.match(name) or name in (".", ".."):
            raise ConfigError(
                f"stream name {stream!r} cannot be a Kafka topic ({name!r}): use letters, digits, '_', '-' and '.', "
                "at most 249 characters with the topic prefix"
            )
        return name

    # Every admin answer comes through these three: a broker that is down or slow becomes a
    # BackendError here, never a raw KafkaException or concurrent.futures.TimeoutError.

    def _result(self, future: Any, what: str, timeout: float | None = None) -> Any:
        wait = self._timeout if timeout is None else timeout
        try:
            return future.result(timeout=wait)
        except self._ck.KafkaException as exc:
            raise translate(exc, what) from exc
        except TimeoutError as exc:
            raise self._no_answer(what, wait) from exc

    def _no_answer(self, what: str, seconds: float) -> BackendError:
        return BackendError(
            f"{what}: Kafka did not answer in {seconds:.0f}s; check that the brokers in "
            f"{self._common['bootstrap.servers']!r} are up and reachable, then retry"
        )

    def _wait(self, futures: Mapping[Any, Any], what: str) -> dict[Any, Any]:
        return {key: self._result(future, what) for key, future in futures.items()}

    def _topics(self, what: str, topic: str | None = None) -> dict[str, Any]:
        try:
            meta = self._admin.list_topics(topic=topic, timeout=self._timeout)
        except self._ck.KafkaException as exc:
            raise translate(exc, what) from exc
        topics: dict[str, Any] = meta.topics
        return topics

    # -- admin ---------------------------------------------------------------------------------

    def create_stream(self, config: StreamConfig) -> None:
        """Create the topic and its one-partition ``.dlq`` topic; idempotent for the same partition count."""
        if config.partitions < 1:
            raise ConfigError(f"stream {config.name!r}: partitions must be >= 1, got {config.partitions}")
        self._create_topic(config.name, config.partitions, config)
        self._create_topic(dlq_name(config.name), 1, config)
        self._partitions[config.name] = config.partitions
        if self.production:
            self.check_durability(config.name)

    def _create_topic(self, stream: str, partitions: int, config: StreamConfig) -> None:
        topic_config = {
            "retention.ms": str(config.retention_ms if config.retention_ms is not None else -1),
            "retention.bytes": str(config.retention_bytes if config.retention_bytes is not None else -1),
        }
        rf = self.replication_factor if self.replication_factor is not None else -1
        if self.replication_factor is not None and self.replication_factor >= 3:
            topic_config["min.insync.replicas"] = "2"
        new = self._admin_mod.NewTopic(self.topic(stream), num_partitions=partitions, replication_factor=rf, config=topic_config)
        future = self._admin.create_topics([new], operation_timeout=self._timeout)[self.topic(stream)]
        try:
            self._result(future, f"creating stream {stream!r}")
        except BackendError as exc:
            cause = exc.__cause__
            if not isinstance(cause, self._ck.KafkaException) or cause.args[0].code() != self._ck.KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            existing = self._partition_count(stream, refresh=True)
            if existing != partitions:
                raise ConflictError(
                    f"stream {stream!r} exists with {existing} partitions, not {partitions}: keep the declared "
                    f"partitions at {existing}, or delete the stream (losing its records) to change them"
                ) from exc
            return
        self._await_metadata(stream, present=True)

    def _await_metadata(self, stream: str, present: bool) -> None:
        """Kafka creates and deletes topics asynchronously; wait until metadata shows the change."""
        topic = self.topic(stream)
        timeout = self._timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            meta = self._topics(f"waiting for topic {topic!r}").get(topic)
            if present and meta is not None and meta.error is None and meta.partitions and all(p.leader >= 0 for p in meta.partitions.values()):
                return
            if not present and meta is None:
                return
            time.sleep(0.05)
        raise BackendError(f"topic {topic!r} did not {'appear' if present else 'disappear'} in {timeout:.0f}s; check the brokers' health")

    def _partition_count(self, stream: str, refresh: bool = False) -> int:
        if not refresh and stream in self._partitions:
            return self._partitions[stream]
        meta = self._topics(f"reading metadata of stream {stream!r}", self.topic(stream)).get(self.topic(stream))
        if meta is None or meta.error is not None or not meta.partitions:
            self._partitions.pop(stream, None)
            raise NotFoundError(f"no stream {stream!r} (topic {self.topic(stream)!r}) on the bus: declare it and run `keel up`, or check its name")
        self._partitions[stream] = len(meta.partitions)
        return self._partitions[stream]

    def describe(self, stream: str) -> StreamInfo:
        count = self._partition_count(stream, refresh=True)
        topic = self.topic(stream)
        tps = [self._ck.TopicPartition(topic, p) for p in range(count)]
        OffsetSpec = self._admin_mod.OffsetSpec
        earliest = self._wait(self._admin.list_offsets({tp: OffsetSpec.earliest() for tp in tps}), f"reading offsets of {stream!r}")
        latest = self._wait(self._admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}), f"reading offsets of {stream!r}")
        parts = [
            PartitionInfo(tp.partition, int(earliest[tp].offset), int(latest[tp].offset))
            for tp in sorted(earliest, key=lambda t: t.partition)
        ]
        resource = self._admin_mod.ConfigResource(self._admin_mod.ResourceType.TOPIC, topic)
        entries = next(iter(self._wait(self._admin.describe_configs([resource]), f"reading config of {stream!r}").values()))
        config = StreamConfig(
            stream, count,
            retention_ms=_limit(entries.get("retention.ms")),
            retention_bytes=_limit(entries.get("retention.bytes")),
        )
        return StreamInfo(config, parts, self._committed(stream, count))

    def _committed(self, stream: str, count: int) -> dict[str, dict[int, int]]:
        listed = self._result(self._admin.list_consumer_groups(request_timeout=self._timeout), "listing consumer groups")
        groups = [g.group_id for g in listed.valid if g.group_id.startswith(self.prefix)]
        out: dict[str, dict[int, int]] = {}
        topic = self.topic(stream)
        for group in groups:
            request = self._ck.ConsumerGroupTopicPartitions(group, [self._ck.TopicPartition(topic, p) for p in range(count)])
            answer = self._wait(self._admin.list_consumer_group_offsets([request]), f"reading offsets of group {group!r}")
            offsets = {tp.partition: int(tp.offset) for tp in answer[group].topic_partitions if tp.offset >= 0 and tp.error is None}
            if offsets:
                out[group[len(self.prefix):]] = offsets
        return out

    def list_streams(self) -> list[str]:
        topics = self._topics("listing streams")
        return sorted(t[len(self.prefix):] for t in topics if t.startswith(self.prefix) and not t.startswith(_INTERNAL))

    def delete_stream(self, stream: str) -> None:
        """Delete the stream's topic and its dead-letter topic (and every record in them)."""
        self._partition_count(stream, refresh=True)
        names = [self.topic(stream), self.topic(dlq_name(stream))]
        existing = self._topics(f"deleting stream {stream!r}")
        futures = self._admin.delete_topics([n for n in names if n in existing], operation_timeout=self._timeout)
        self._wait(futures, f"deleting stream {stream!r}")
        for name in (stream, dlq_name(stream)):
            self._partitions.pop(name, None)
            self._await_metadata(name, present=False)

    def check_durability(self, stream: str) -> list[str]:
        """Warn (KafkaDurabilityWarning) about each setting of the topic that risks acknowledged events.

        A warning only, not also a log record: both reach stderr, so `keel up` printed each twice."""
        topic = self.topic(stream)
        described = self._wait(self._admin.describe_topics(self._ck.TopicCollection([topic])), f"describing {stream!r}")[topic]
        rf = min(len(p.replicas) for p in described.partitions)
        resource = self._admin_mod.ConfigResource(self._admin_mod.ResourceType.TOPIC, topic)
        entries = next(iter(self._wait(self._admin.describe_configs([resource]), f"reading config of {stream!r}").values()))
        min_isr = int(entries["min.insync.replicas"].value)
        unclean = entries["unclean.leader.election.enable"].value == "true"
        problems = []
        if rf < 3:
            problems.append(
                f"topic {topic!r} has replication factor {rf}: one broker loss can lose acknowledged events. "
                "Recreate it with replication factor 3 (keel option replication_factor=3) or reassign its partitions"
            )
        if min_isr < 2 or min_isr >= rf:
            problems.append(
                f"topic {topic!r} has min.insync.replicas={min_isr} with replication factor {rf}: acks=all "
                + ("then waits for a single replica" if min_isr < 2 else "then refuses every write while one replica is down")
                + f". Set it to 2 with replication factor 3: kafka-configs --alter --entity-type topics --entity-name {topic} --add-config min.insync.replicas=2"
            )
        if unclean:
            problems.append(
                f"topic {topic!r} allows unclean leader election, which discards acknowledged events. "
                f"Turn it off: kafka-configs --alter --entity-type topics --entity-name {topic} --add-config unclean.leader.election.enable=false"
            )
        for problem in problems:
            warnings.warn(problem, KafkaDurabilityWarning, stacklevel=2)
        return problems

    # -- produce -------------------------------------------------------------------------------

    def produce(self, stream: str, batch: pa.RecordBatch | pa.Table) -> Produced:
        """Send every record and return once all are acknowledged by the in-sync replicas."""
        batch = conform_produce(batch)
        count = self._partition_count(stream)
        n = batch.num_rows
        keys = batch.column("key") if "key" in batch.column_names else pa.nulls(n, pa.binary())
        with self._round_robin_lock:
            start = self._round_robin.get(stream, 0)
            self._round_robin[stream] = start + keys.null_count
        partitions = kafka_partitions(keys, count, start)
        if n == 0:
            return Produced(partitions, np.empty(0, dtype=np.int64))
        if "timestamp" in batch.column_names and batch.column("timestamp").null_count < n:
            self._check_timestamps(stream, batch.column("timestamp"))
        return Produced(partitions, self._sender.send(self.topic(stream), batch, keys.to_pylist(), partitions))

    def _check_timestamps(self, stream: str, stamps: pa.ChunkedArray) -> None:
        """Refuse, before sending anything, timestamps the broker would refuse (Kafka 4 takes at
        most 1 hour into the future by default): one bad record must not fail a batch half-written."""
        if stream not in self._timestamp_limits:
            resource = self._admin_mod.ConfigResource(self._admin_mod.ResourceType.TOPIC, self.topic(stream))
            entries = next(iter(self._wait(self._admin.describe_configs([resource]), f"reading config of {stream!r}").values()))

            def limit(key: str) -> int:
                entry = entries.get(key)
                return int(entry.value) if entry is not None and entry.value is not None else 2**62

            self._timestamp_limits[stream] = (limit("message.timestamp.before.max.ms"), limit("message.timestamp.after.max.ms"))
        before, after = self._timestamp_limits[stream]
        values = pc.drop_null(stamps).cast(pa.int64()).to_numpy()
        now = time.time_ns() // 1_000_000
        bad = (values < max(0, now - before)) | (values > now + min(after, 2**62))  # Kafka has no time before 1970
        if bad.any():
            raise SchemaError(
                f"stream {stream!r}: {int(bad.sum())} record(s) have a timestamp Kafka refuses (e.g. "
                f"{int(values[bad][0])} ms; the topic takes now - {before} ms to now + {after} ms); nothing was "
                "written. Fix the event times, or raise message.timestamp.after.max.ms / before.max.ms on the topic"
            )

    # -- consume -------------------------------------------------------------------------------

    def consumer(self, stream: str, group: str, partitions: list[int] | None = None) -> KafkaConsumer:
        count = self._partition_count(stream)
        if partitions is not None:
            bad = [p for p in partitions if not 0 <= p < count]
            if bad:
                raise NotFoundError(f"stream {stream!r} has partitions 0..{count - 1}; there is no partition {bad}")
        # Asking for the group's members first also waits out a group coordinator that is still
        # loading: a consumer whose first offset fetch meets one never starts fetching.
        # A sole member can finish joining now, so `assignment` is known on return. With members
        # already in the group, the join completes only as they poll: it goes on in `poll`.
        has_members = self._has_members(self.prefix + group)
        join_now = partitions is None and not has_members
        consumer = KafkaConsumer(self._ck, self._common, self.topic(stream), self.prefix + group, partitions, join_now)
        self._consumers.append(consumer)
        return consumer

    def _has_members(self, group: str) -> bool:
        """Whether `group` has members; asked again (within the admin timeout) while the group
        coordinator loads, moves or does not answer, as it may for a while after a broker restart."""
        KafkaError = self._ck.KafkaError
        moving = {
            KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
            KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
        }
        what = f"describing group {group!r}"
        deadline = time.monotonic() + self._timeout
        while True:
            # A fresh request per attempt: one sent into a restart may never be answered.
            attempt = max(0.5, min(_ATTEMPT, deadline - time.monotonic()))
            future = self._admin.describe_consumer_groups([group], request_timeout=attempt)[group]
            try:
                return bool(self._result(future, what, timeout=attempt + 1).members)
            except BackendError as exc:
                cause = exc.__cause__
                transient = isinstance(cause, TimeoutError) or (
                    isinstance(cause, self._ck.KafkaException) and (cause.args[0].code() in moving or cause.args[0].retriable())
                )
                if not transient:
                    raise
                if time.monotonic() + 0.2 >= deadline:
                    raise BackendError(f"{what}: still failing after {self._timeout:.0f}s; last error: {exc}") from exc
            time.sleep(0.2)

    def close(self) -> None:
        for consumer in self._consumers:
            consumer.close()
        self._consumers.clear()
        self._sender.close()


def _limit(entry: Any) -> int | None:
    if entry is None or entry.value is None:
        return None
    value = int(entry.value)
    return None if value < 0 else value
