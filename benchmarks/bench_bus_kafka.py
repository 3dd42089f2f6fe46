"""Benchmark: keel's kafka:// bus against Kafka's own perf tools, on the same broker in the same run.

Claims measured (100-byte records, one partition, acks=all + idempotence on both sides):
 (1) produce: keel `produce` of Arrow batches (default 100,000 records per call; each call waits
     for every delivery report) versus `org.apache.kafka.tools.ProducerPerformance` (the Java
     client streaming without waiting). Target: >= 0.5x.
 (2) consume: keel `poll(100_000)` into Arrow RecordBatches versus
     `org.apache.kafka.tools.ConsumerPerformance`; both include the group join. Target: >= 0.5x.
 (3) extra: keel produce in gateway-sized calls of 1,000 records (latency bound: one flush per call).

Usage: python benchmarks/bench_bus_kafka.py [--records N] [--batch B] [--reps R] [--bootstrap HOST:PORT]
Without --bootstrap it starts a single-node KRaft broker from .cache/kafka/lib (scripts/install-kafka.sh).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keel.bus import StreamConfig, open_bus
from keel.bus.kafka import KafkaBus

CLASSPATH = str(ROOT / ".cache" / "kafka" / "lib" / "*")
JAVA = ["java", "-Xmx512m", "-cp", CLASSPATH]
SAME_SETTINGS = ["acks=all", "enable.idempotence=true", "linger.ms=5"]


def make_batch(n: int) -> pa.RecordBatch:
    values = [os.urandom(92) + i.to_bytes(8, "little") for i in range(n)]
    return pa.record_batch({"value": pa.array(values, pa.binary())})


def keel_produce(bus: KafkaBus, topic: str, records: int, batch_size: int) -> float:
    bus.create_stream(StreamConfig(topic, 1))
    batch = make_batch(batch_size)
    t0 = time.perf_counter()
    for _ in range(records // batch_size):
        bus.produce(topic, batch)
    return (records // batch_size) * batch_size / (time.perf_counter() - t0)


def keel_consume(bus: KafkaBus, topic: str, records: int) -> tuple[float, float]:
    """(records/s including the group join, records/s from the first record on)."""
    t0 = time.perf_counter()
    consumer = bus.consumer(topic, f"bench-{uuid.uuid4().hex[:6]}")
    got, first = 0, 0.0
    while got < records:
        n = consumer.poll(100_000, timeout=1.0).num_rows
        if n and not got:
            first = time.perf_counter()
        got += n
    end = time.perf_counter()
    consumer.close()
    return got / (end - t0), got / (end - first)


def java_produce(bootstrap: str, topic: str, records: int, extra: list[str]) -> float:
    out = subprocess.run(
        [*JAVA, "org.apache.kafka.tools.ProducerPerformance", "--bootstrap-server", bootstrap, "--topic", topic,
         "--num-records", str(records), "--record-size", "100", "--throughput", "-1",
         "--command-property", *SAME_SETTINGS, *extra],
        check=True, capture_output=True, text=True,
    ).stdout
    # last line: "1000000 records sent, 312345.6 records/sec (29.79 MB/sec), ..."
    last = [line for line in out.splitlines() if "records sent" in line][-1]
    return float(last.split("records sent,")[1].split("records/sec")[0])


def java_consume(bootstrap: str, topic: str, records: int) -> tuple[float, float]:
    """(records/s including the group join, records/s of fetching only), as the tool reports them."""
    out = subprocess.run(
        [*JAVA, "org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", bootstrap, "--topic", topic,
         "--num-records", str(records), "--group", f"bench-{uuid.uuid4().hex[:6]}", "--timeout", "60000"],
        check=True, capture_output=True, text=True,
    ).stdout
    header, row = [line for line in out.splitlines() if line.strip()][-2:]
    fields = dict(zip([h.strip() for h in header.split(",")], [v.strip() for v in row.split(",")]))
    return float(fields["nMsg.sec"]), float(fields["fetch.nMsg.sec"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--small-records", type=int, default=200_000, help="records for the 1,000-record-call run")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--bootstrap", help="an existing broker; default: start one")
    args = parser.parse_args()

    broker = None
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        from tests.harness.kafka import KafkaBroker

        broker = KafkaBroker(heap="1g")
        broker.start()
        bootstrap = broker.bootstrap
    try:
        bus = open_bus(f"kafka://{bootstrap}?topic_prefix=bench-{uuid.uuid4().hex[:6]}.")
        assert isinstance(bus, KafkaBus)
        rows: dict[str, list[float]] = {
            k: [] for k in ("keel_p", "java_p", "java_p_1mb", "keel_c", "java_c", "keel_cf", "java_cf", "keel_small")
        }
        for rep in range(args.reps):
            jt, kt = f"java-{rep}", f"keel-{rep}"
            bus.create_stream(StreamConfig(jt, 1))
            rows["java_p"].append(java_produce(bootstrap, bus.topic(jt), args.records, []))
            rows["keel_p"].append(keel_produce(bus, kt, args.records, args.batch))
            bus.create_stream(StreamConfig(jt + "-1mb", 1))
            # The Java client batches 16 KiB by default; librdkafka 1 MB. Also run Java with keel's batch size.
            rows["java_p_1mb"].append(java_produce(bootstrap, bus.topic(jt + "-1mb"), args.records, ["batch.size=1000000"]))
            for key, (total, fetch) in (("java", java_consume(bootstrap, bus.topic(jt), args.records)),
                                        ("keel", keel_consume(bus, kt, args.records))):
                rows[f"{key}_c"].append(total)
                rows[f"{key}_cf"].append(fetch)
            rows["keel_small"].append(keel_produce(bus, f"small-{rep}", args.small_records, 1000))
        med = {k: statistics.median(v) for k, v in rows.items()}
        bus.close()
    finally:
        if broker is not None:
            broker.close()

    print(f"records={args.records} x 100 B, one partition, acks=all, idempotent; reps={args.reps}; broker {bootstrap}")
    print(f"produce  keel ({args.batch:,}/call)     {med['keel_p']:>12,.0f} rec/s")
    print(f"produce  ProducerPerformance          {med['java_p']:>12,.0f} rec/s   ratio keel/java {med['keel_p'] / med['java_p']:.2f}x")
    print(f"produce  ProducerPerformance 1MB batch {med['java_p_1mb']:>11,.0f} rec/s   ratio keel/java {med['keel_p'] / med['java_p_1mb']:.2f}x")
    print(f"consume  keel poll(100k), with join   {med['keel_c']:>12,.0f} rec/s")
    print(f"consume  ConsumerPerformance, with join {med['java_c']:>10,.0f} rec/s   ratio keel/java {med['keel_c'] / med['java_c']:.2f}x")
    print(f"consume  keel poll(100k), fetch only  {med['keel_cf']:>12,.0f} rec/s")
    print(f"consume  ConsumerPerformance, fetch   {med['java_cf']:>12,.0f} rec/s   ratio keel/java {med['keel_cf'] / med['java_cf']:.2f}x")
    print(f"produce  keel (1,000/call, gateway)   {med['keel_small']:>12,.0f} rec/s")


if __name__ == "__main__":
    main()
