"""Benchmark: the Kafka engine's key partitioner (murmur2, vectorized) in the same run as
(a) the CRC-32 placement it replaced (``keel.bus.base.partition_for``, still the file:// bus's) and
(b) a per-record Python murmur2 loop (how kafka-python computes it), the peer that justifies numpy.

Keys: N user ids like ``user-123456`` (11-12 bytes, what the gateway sends), into 12 partitions.
Usage: python benchmarks/bench_kafka_partitioner.py [--keys N] [--reps R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import pyarrow as pa

from keel.bus._kafka_partitioner import kafka_partitions
from keel.bus.base import partition_for


def python_murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2, one key at a time (kafka-python's loop)."""
    length, m, h = len(data), 0x5BD1E995, 0x9747B28C ^ len(data)
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length % 4
    if rest:
        base = length - rest
        if rest == 3:
            h ^= data[base + 2] << 16
        if rest >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def rate(fn: Callable[[], object], n: int, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    raw = [f"user-{i}".encode() for i in range(args.keys)]
    keys = pa.array(raw, pa.binary())
    murmur = rate(lambda: kafka_partitions(keys, 12), args.keys, args.reps)
    crc = rate(lambda: partition_for(keys, 12), args.keys, args.reps)
    sample = raw[: max(1, args.keys // 10)]
    loop = rate(lambda: [(python_murmur2(k) & 0x7FFFFFFF) % 12 for k in sample], len(sample), 1)
    print(f"keys/s  murmur2 (keel, numpy): {murmur:,.0f}")
    print(f"keys/s  crc32 (before):        {crc:,.0f}   ratio murmur2/crc32 {murmur / crc:.2f}x")
    print(f"keys/s  murmur2 Python loop:   {loop:,.0f}   ratio numpy/loop {murmur / loop:.1f}x")


if __name__ == "__main__":
    main()
