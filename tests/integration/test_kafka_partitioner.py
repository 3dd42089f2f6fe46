"""keel's Kafka engine places keys where the Java clients do (murmur2, positive, mod n).

The oracle is the broker jars' own code, run with ``java`` (single-file source launch): the
producer's ``BuiltInPartitioner.partitionForKey`` and ``Utils.murmur2``, then a real
``KafkaProducer`` with its default partitioner writing the same keys to the same topic as keel.
"""

from __future__ import annotations

import random
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from keel.bus import open_bus
from keel.bus.base import StreamConfig
from keel.bus.kafka import KafkaBus
from tests.harness.kafka import KafkaBroker, kafka_classpath

pytestmark = pytest.mark.kafka

PARTITION_COUNTS = (1, 2, 3, 7, 12, 100, 1009)

_HASHES_JAVA = """\
import java.nio.file.*;
import java.util.*;
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;
import org.apache.kafka.common.utils.Utils;

public class Hashes {
    public static void main(String[] args) throws Exception {
        HexFormat hex = HexFormat.of();
        StringBuilder out = new StringBuilder();
        for (String line : Files.readAllLines(Path.of(args[0]))) {
            byte[] key = hex.parseHex(line);
            out.append(Utils.murmur2(key));
            for (int i = 1; i < args.length; i++) {
                out.append(' ').append(BuiltInPartitioner.partitionForKey(key, Integer.parseInt(args[i])));
            }
            out.append('\\n');
        }
        System.out.print(out);
    }
}
"""

_PRODUCER_JAVA = """\
import java.nio.file.*;
import java.util.*;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.*;

public class JavaProducer {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("acks", "all");
        props.put("key.serializer", "org.apache.kafka.common.serialization.ByteArraySerializer");
        props.put("value.serializer", "org.apache.kafka.common.serialization.ByteArraySerializer");
        HexFormat hex = HexFormat.of();
        List<Future<RecordMetadata>> sent = new ArrayList<>();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            for (String line : Files.readAllLines(Path.of(args[2]))) {
                sent.add(producer.send(new ProducerRecord<>(args[1], hex.parseHex(line), "java".getBytes())));
            }
            StringBuilder out = new StringBuilder();
            for (Future<RecordMetadata> f : sent) out.append(f.get().partition()).append('\\n');
            System.out.print(out);
        }
    }
}
"""


def sample_keys() -> list[bytes]:
    """A few thousand keys: empty, every tail length, ASCII ids, non-ASCII text, bytes >= 0x80, long keys."""
    rng = random.Random(20261201)
    keys = [b""]
    keys += [bytes([b]) * n for b in (0x00, 0x01, 0x7F, 0x80, 0xFF) for n in range(1, 10)]
    keys += [f"user-{i}".encode() for i in range(2000)]
    keys += [f"名前-ü-🙂-{i}".encode() for i in range(300)]
    keys += [rng.randbytes(rng.randrange(0, 48)) for _ in range(1500)]
    keys += [rng.randbytes(n) for n in (63, 64, 65, 255, 256, 1000, 4097, 65_536)]
    return keys


def write_keys(path: Path, keys: list[bytes]) -> Path:
    path.write_text("".join(k.hex() + "\n" for k in keys))
    return path


def run_java(source: str, name: str, tmp_path: Path, *args: str) -> list[str]:
    """Run a single-file Java program against the broker jars; its stdout lines."""
    program = tmp_path / f"{name}.java"
    program.write_text(source)
    done = subprocess.run(
        ["java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-cp", kafka_classpath(), str(program), *args],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


@pytest.fixture
def bus(kafka_bootstrap: str) -> Iterator[KafkaBus]:
    opened = open_bus(kafka_bootstrap, topic_prefix=f"part-{uuid.uuid4().hex[:8]}.")
    assert isinstance(opened, KafkaBus)
    yield opened
    opened.close()


def test_keel_places_every_key_where_the_java_partitioner_does(tmp_path: Path) -> None:
    from keel.bus.kafka import kafka_partitions, murmur2

    keys = sample_keys()
    lines = run_java(_HASHES_JAVA, "Hashes", tmp_path, str(write_keys(tmp_path / "keys.txt", keys)),
                     *map(str, PARTITION_COUNTS))
    java = [list(map(int, line.split())) for line in lines]
    assert len(java) == len(keys)
    column = pa.array(keys, pa.binary())
    assert murmur2(column).astype("int32").tolist() == [row[0] for row in java]
    for i, n in enumerate(PARTITION_COUNTS, start=1):
        assert kafka_partitions(column, n).tolist() == [row[i] for row in java], f"{n} partitions"
    # the same from a sliced, chunked string column, as produce may receive it
    text = [k.decode("utf-8", "replace") for k in keys]
    chunked = pa.chunked_array([pa.array(["x", *text[:1000]]).slice(1), pa.array(text[1000:])])
    utf8 = run_java(_HASHES_JAVA, "Hashes", tmp_path, str(write_keys(tmp_path / "text.txt", [t.encode() for t in text])), "12")
    assert kafka_partitions(chunked, 12).tolist() == [int(line.split()[1]) for line in utf8]


def test_null_keys_go_round_robin_between_hashed_keys() -> None:
    from keel.bus.kafka import kafka_partitions

    one, two = kafka_partitions(pa.array([b"user-1", b"user-2"]), 3).tolist()
    mixed = pa.array([b"user-1", None, None, b"user-2", None], pa.binary())
    assert kafka_partitions(mixed, 3, start=4).tolist() == [one, 1, 2, two, 0]


def test_keel_and_a_java_producer_put_each_key_in_the_same_partition(bus: KafkaBus, kafka_broker: KafkaBroker,
                                                                     tmp_path: Path) -> None:
    keys = sample_keys()
    bus.create_stream(StreamConfig("mixed", partitions=7))
    keel_placed = bus.produce("mixed", pa.table({
        "key": pa.array(keys, pa.binary()), "value": pa.array([b"keel"] * len(keys), pa.binary()),
    })).partitions.tolist()
    java_placed = [int(p) for p in run_java(
        _PRODUCER_JAVA, "JavaProducer", tmp_path, kafka_broker.bootstrap, bus.topic("mixed"),
        str(write_keys(tmp_path / "keys.txt", keys)),
    )]
    assert len(java_placed) == len(keys)
    split = [(k, p, q) for k, p, q in zip(keys, keel_placed, java_placed) if p != q]
    assert not split, f"{len(split)} keys land in two partitions, e.g. {split[:3]}"
    # both producers used most partitions, so agreement is not agreement on one partition
    assert len(set(keel_placed)) == 7
