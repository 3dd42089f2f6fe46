"""Framing of the file:// bus and the recovery scan that tells a torn tail from damaged data."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pyarrow as pa
import pytest

from keel.bus import _frame
from keel.bus._log import scan_segment
from keel.bus.base import partition_for
from keel.bus.file import normalize


def stored(n: int, tag: str = "v") -> pa.RecordBatch:
    return normalize(pa.record_batch({"value": pa.array([f"{tag}{i}".encode() for i in range(n)], pa.binary())}))


def frame(batch: pa.RecordBatch, base: int, durable: int) -> bytes:
    header, payload = _frame.encode(batch, base, durable, 0, 0, 123)
    return header + payload.to_pybytes()


def segment(counts: list[int], durable_lag: int = 0) -> tuple[bytes, list[int]]:
    """A segment of frames holding `counts` records; each frame says everything before the one
    `durable_lag` frames back was fsync'd. Returns the bytes and the byte position of each frame."""
    data, positions, base, bases = b"", [], 0, []
    for i, n in enumerate(counts):
        bases.append(base)
        durable = bases[i - durable_lag] if i >= durable_lag else 0
        positions.append(len(data))
        data += frame(stored(n, f"f{i}-"), base, durable)
        base += n
    return data, positions


def test_header_round_trips() -> None:
    raw = _frame.pack_header(100, 7, 42, 40, -5, 9, 123, 0xDEADBEEF)
    assert len(raw) == _frame.HEADER_SIZE
    assert _frame.parse_header(raw, 0) == _frame.Header(100, 7, 42, 40, -5, 9, 123, 0xDEADBEEF)


def test_any_flipped_header_byte_is_detected() -> None:
    raw = bytearray(_frame.pack_header(100, 7, 42, 40, -5, 9, 123, 0xDEADBEEF))
    for i in range(len(raw)):
        for bit in (0, 3, 7):
            damaged = bytearray(raw)
            damaged[i] ^= 1 << bit
            assert _frame.parse_header(bytes(damaged), 0) is None, (i, bit)


def test_a_cut_short_header_is_not_parsed() -> None:
    raw = _frame.pack_header(10, 1, 0, 0, 0, 0, 0, 0)
    for cut in range(len(raw)):
        assert _frame.parse_header(raw[:cut], 0) is None


def test_payload_round_trips_through_arrow_ipc() -> None:
    batch = normalize(pa.record_batch({
        "key": pa.array([b"k", None], pa.binary()),
        "value": pa.array([b"a", b"b"], pa.binary()),
        "headers": pa.array([[("event_id", b"1")], None], pa.map_(pa.string(), pa.binary())),
    }))
    data = frame(batch, 5, 0)
    header = _frame.parse_header(data, 0)
    assert header is not None and header.base == 5 and header.records == 2 and header.end == 7
    assert _frame.payload_ok(header, data, 0)
    assert _frame.decode(header, data[_frame.HEADER_SIZE:]).equals(batch)


def test_a_flipped_payload_byte_fails_the_crc() -> None:
    data = bytearray(frame(stored(10), 0, 0))
    header = _frame.parse_header(bytes(data), 0)
    assert header is not None
    rng = random.Random(1)
    for _ in range(50):
        damaged = bytearray(data)
        damaged[rng.randrange(_frame.HEADER_SIZE, len(data))] ^= 1 << rng.randrange(8)
        assert not _frame.payload_ok(header, bytes(damaged), 0)


def test_find_next_resyncs_after_garbage() -> None:
    good = frame(stored(3), 10, 0)
    data = b"\x00" * 17 + _frame.MAGIC + b"junkjunk" + good
    found = _frame.find_next(data, 0)
    assert found is not None and found[0] == len(data) - len(good) and found[1].base == 10


# -- the recovery scan ---------------------------------------------------------------------------


def test_a_clean_segment_scans_to_its_end() -> None:
    data, _ = segment([3, 4, 5])
    scan = scan_segment(data, 0)
    assert (scan.end_pos, scan.end_offset, scan.torn, scan.damaged) == (len(data), 12, False, [])


def test_a_cut_at_any_byte_of_the_last_frame_is_a_torn_tail() -> None:
    data, positions = segment([3, 4, 5], durable_lag=1)
    last = positions[-1]
    for cut in range(last + 1, len(data)):
        scan = scan_segment(data[:cut], 0)
        assert scan.torn and scan.end_pos == last and scan.end_offset == 7, cut


def test_damage_after_everything_fsynced_is_a_torn_tail() -> None:
    # frames 2..4 were written after the last fsync (durable stays at frame 2's base): unacknowledged
    data, positions = segment([2, 2, 2, 2, 2], durable_lag=0)
    data = _patch(data, positions, [0, 0, 4, 4, 4])
    damaged = bytearray(data)
    damaged[positions[2] + 70] ^= 0xFF
    scan = scan_segment(bytes(damaged), 0)
    assert scan.torn and scan.end_pos == positions[2] and scan.end_offset == 4 and scan.damaged == []


def test_damage_to_fsynced_data_is_kept_and_reported_never_cut() -> None:
    data, positions = segment([2, 2, 2, 2, 2], durable_lag=1)  # each frame proves its predecessor fsync'd
    for where in (positions[1] + 3, positions[1] + 30, positions[1] + 80):  # header magic, header body, payload
        damaged = bytearray(data)
        damaged[where] ^= 0x10
        scan = scan_segment(bytes(damaged), 0)
        assert not scan.torn and scan.damaged == [2] and scan.end_pos == len(data) and scan.end_offset == 10, where


def test_a_zeroed_or_scrambled_tail_is_cut() -> None:
    data, _ = segment([2, 2, 2], durable_lag=1)
    rng = random.Random(7)
    for tail in (b"\x00" * 300, bytes(rng.randrange(256) for _ in range(300))):
        scan = scan_segment(data + tail, 0)
        assert scan.torn and scan.end_pos == len(data) and scan.end_offset == 6


def test_a_frame_with_the_wrong_base_offset_is_damage() -> None:
    a = frame(stored(2), 0, 0)
    b = frame(stored(2), 5, 0)  # should be 2
    scan = scan_segment(a + b, 0)
    assert scan.torn and scan.end_pos == len(a)


def _patch(data: bytes, positions: list[int], durables: list[int]) -> bytes:
    """Rewrite the `durable` field of each frame (and its header CRC)."""
    out = bytearray(data)
    for pos, durable in zip(positions, durables):
        h = _frame.parse_header(bytes(out), pos)
        assert h is not None
        out[pos : pos + _frame.HEADER_SIZE] = _frame.pack_header(
            h.length, h.records, h.base, durable, h.min_ts, h.max_ts, h.append_ms, h.payload_crc)
    return bytes(out)


# -- partition_for ---------------------------------------------------------------------------------


def _reference(keys: list[bytes | None], partitions: int, start: int) -> list[int]:
    """The loop partition_for replaced: its results must never change."""
    out, rr = [], start
    for key in keys:
        if key is None:
            out.append(rr % partitions)
            rr += 1
        else:
            out.append(zlib.crc32(key) % partitions)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_vectorized_partition_for_matches_crc32_mod_n(seed: int) -> None:
    rng = random.Random(seed)
    keys = [None if rng.random() < 0.2 else rng.randbytes(rng.randrange(0, 70)) for _ in range(rng.randrange(1, 800))]
    partitions, start = rng.randrange(2, 17), rng.randrange(0, 9)
    arr = pa.array(keys, pa.binary())
    assert partition_for(arr, partitions, start).tolist() == _reference(keys, partitions, start)
    sliced = arr.slice(1)
    assert partition_for(sliced, partitions, start).tolist() == _reference(keys[1:], partitions, start)
    chunked = pa.chunked_array([arr.slice(0, 3), arr.slice(3)], pa.binary())
    assert partition_for(chunked, partitions, start).tolist() == _reference(keys, partitions, start)


def test_partition_for_keeps_known_values() -> None:
    keys = pa.array([b"user-1", b"user-2", b"", None, b"user-1"], pa.binary())
    assert partition_for(keys, 7, start=3).tolist() == [zlib.crc32(b"user-1") % 7, zlib.crc32(b"user-2") % 7, 0, 3,
                                                        zlib.crc32(b"user-1") % 7]
    assert partition_for(keys, 1).dtype == np.int32
