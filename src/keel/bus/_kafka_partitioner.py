"""Where the Kafka engine puts a key: the Java clients' default partitioner, vectorized.

Java producers, Kafka Streams and librdkafka's ``murmur2_random`` place a non-null key at
``toPositive(murmur2(key)) % partitions`` (``BuiltInPartitioner.partitionForKey``), so keel does
too: with mixed producers a key's events share one partition. ``file://`` keeps its CRC-32
placement (``keel.bus.base.partition_for``): its streams already hold data placed that way.

The hash runs over all keys at once, one numpy step per 4-byte word position (keys are short),
never one Python step per record: about 20x the keys/s of a per-record Python loop (see
benchmarks/bench_kafka_partitioner.py).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from keel.bus.base import key_buffers

_M = np.uint32(0x5BD1E995)
_SEED = np.uint32(0x9747B28C)


def _large_binary(keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if not pa.types.is_large_binary(keys.type):
        keys = keys.cast(pa.large_binary())  # one offsets layout (int64) for binary, string, large_*
    return keys


_FEW = 8


def _chain(words: np.ndarray, h: int) -> int:
    """murmur2's word loop for one key: the words mixed at once, then the sequential chain."""
    k = words.astype(np.uint32)
    np.multiply(k, _M, out=k)
    np.bitwise_xor(k, k >> np.uint32(24), out=k)
    np.multiply(k, _M, out=k)
    m = int(_M)
    for word in k.tolist():
        h = ((h * m) & 0xFFFFFFFF) ^ word
    return h


def murmur2(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Kafka's ``Utils.murmur2`` of every key, as uint32 (a null key hashes as b"")."""
    keys = _large_binary(keys)
    n = len(keys)
    offsets, raw, lengths = key_buffers(keys)
    # A little-endian uint32 starting at every byte (no copy); words are read only where a
    # key has four bytes left, so no read passes the end of the data.
    word_at = np.ndarray(shape=(max(raw.size - 3, 0),), dtype="<u4", buffer=raw, strides=(1,))

    words = lengths // 4
    # most words first, so the keys still hashing at word j are a prefix of the order
    order = np.argsort(-words, kind="stable")
    pos = offsets[:-1][order].copy()
    h = _SEED ^ lengths[order].astype(np.uint32)
    running = np.searchsorted(-words[order], -np.arange(int(words.max(initial=0))), side="left")
    lengths_in_order = words[order]
    for j, c in enumerate(running.tolist()):
        if c <= _FEW:
            # A few long keys left: a numpy step per word would cost more than the keys' own work.
            for r in range(c):
                left = int(lengths_in_order[r]) - j
                h[r] = _chain(word_at[pos[r]: pos[r] + 4 * left: 4], int(h[r]))
                pos[r] += 4 * left
            break
        k = word_at[pos[:c]]
        np.multiply(k, _M, out=k)
        np.bitwise_xor(k, k >> np.uint32(24), out=k)
        np.multiply(k, _M, out=k)
        head = h[:c]
        np.multiply(head, _M, out=head)
        np.bitwise_xor(head, k, out=head)
        pos[:c] += 4

    tail = (lengths[order] % 4).astype(np.int64)
    for shift, need in ((16, 3), (8, 2), (0, 1)):  # Java's switch falls through from case 3 to case 1
        rows = np.flatnonzero(tail >= need)
        h[rows] ^= raw[pos[rows] + (need - 1)].astype(np.uint32) << np.uint32(shift)
    rows = np.flatnonzero(tail > 0)
    h[rows] *= _M

    h ^= h >> np.uint32(13)
    h *= _M
    h ^= h >> np.uint32(15)
    out = np.empty(n, dtype=np.uint32)
    out[order] = h
    return out


def kafka_partitions(keys: pa.Array | pa.ChunkedArray, partitions: int, start: int = 0) -> np.ndarray:
    """The partition of each key as the Java producer computes it; null keys go round-robin from `start`."""
    n = len(keys)
    if partitions == 1 or n == 0:
        return np.zeros(n, dtype=np.int32)
    keys = _large_binary(keys)
    out = ((murmur2(keys) & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).astype(np.int32)
    if keys.null_count:
        nulls = ~np.asarray(keys.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        out[nulls] = ((start + np.arange(int(nulls.sum()))) % partitions).astype(np.int32)
    return out
