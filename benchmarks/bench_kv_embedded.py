"""Embedded kv: keel's SQLite engine against LMDB doing the same job, in the same run.

The LMDB side implements the same contract the way an LMDB engine would have to (a packed
header carrying expiry and version, read-compare-write inside one write transaction), minus
expiry purging, which LMDB would need a second index for. Both sides fsync each batch commit
(SQLite synchronous=FULL, LMDB sync=True); SQLite synchronous=NORMAL is shown too.

    pip install lmdb   # the peer; keel itself does not depend on it
    python benchmarks/bench_kv_embedded.py [--keys 50000] [--batch 1000] [--redis URL]

With ``--redis URL`` it also measures keel's Redis engine (the production engine) for scale;
it writes into that database. Prints operations per second for get / get_many / put_many / upsert_many and keel/LMDB ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from keel.kv import open_kv

_HEADER = struct.Struct(">dBq")  # expires (0 = never), has_version, version


class LmdbKv:
    """The kv contract on LMDB, as small as it can honestly be (no purge of expired rows)."""

    def __init__(self, path: Path, sync: bool = True) -> None:
        import lmdb

        self.env = lmdb.open(str(path), map_size=4 << 30, subdir=False, sync=sync, max_readers=256, lock=True)

    def get(self, key: str) -> bytes | None:
        with self.env.begin(buffers=False) as txn:
            return self._live(txn.get(key.encode()), time.time())

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.time()
        with self.env.begin() as txn:
            return [self._live(txn.get(k.encode()), now) for k in keys]

    def put_many(self, items: Sequence[tuple[str, bytes]], ttl: float | None = None) -> None:
        expires = time.time() + ttl if ttl else 0.0
        with self.env.begin(write=True) as txn:
            for key, value in items:
                txn.put(key.encode(), _HEADER.pack(expires, 0, 0) + value)

    def upsert_many(self, items: Sequence[tuple[str, int, bytes]], ttl: float | None = None) -> int:
        now = time.time()
        expires = now + ttl if ttl else 0.0
        written = 0
        with self.env.begin(write=True) as txn:
            for key, version, value in items:
                k = key.encode()
                old = txn.get(k)
                if old is not None:
                    old_expires, has_version, old_version = _HEADER.unpack_from(old)
                    live = old_expires == 0.0 or old_expires > now
                    if live and has_version and version < old_version:
                        continue
                txn.put(k, _HEADER.pack(expires, 1, version) + value)
                written += 1
        return written

    def close(self) -> None:
        self.env.close()

    @staticmethod
    def _live(raw: bytes | None, now: float) -> bytes | None:
        if raw is None:
            return None
        expires = _HEADER.unpack_from(raw)[0]
        return raw[_HEADER.size :] if expires == 0.0 or expires > now else None


def measure(name: str, kv: object, keys: list[str], batch: int, value: bytes) -> dict[str, float]:
    rng = random.Random(7)
    results: dict[str, float] = {}

    def rate(label: str, ops: int, run: Callable[[], None]) -> None:
        start = time.perf_counter()
        run()
        results[label] = ops / (time.perf_counter() - start)

    batches = [keys[i : i + batch] for i in range(0, len(keys), batch)]
    rate("put_many", len(keys), lambda: [kv.put_many([(k, value) for k in b]) for b in batches])  # type: ignore[attr-defined]
    rate(
        "upsert_many",
        len(keys),
        lambda: [kv.upsert_many([(k, 2, value) for k in b]) for b in batches],  # type: ignore[attr-defined]
    )
    singles = [rng.choice(keys) for _ in range(min(len(keys), 20_000))]
    rate("get", len(singles), lambda: [kv.get(k) for k in singles])  # type: ignore[attr-defined]
    groups = [[rng.choice(keys) for _ in range(100)] for _ in range(200)]
    rate("get_many(100)", 100 * len(groups), lambda: [kv.get_many(g) for g in groups])  # type: ignore[attr-defined]
    kv.close()  # type: ignore[attr-defined]
    print(f"{name:28s} " + "  ".join(f"{op} {ops:>10,.0f}/s" for op, ops in results.items()), flush=True)
    return results


def _open(kind: str, path: Path) -> Any:
    if kind == "lmdb":
        return LmdbKv(path)
    return open_kv(f"file://{path}", synchronous=kind.split(":")[1])


def _writer(kind: str, path: Path, keys: list[str], batch: int, stop_at: float, out: Any) -> None:
    kv, version, rows = _open(kind, path), 3, 0
    while time.time() < stop_at:
        for start in range(0, len(keys), batch):
            rows += kv.upsert_many([(k, version, b"y" * 64) for k in keys[start : start + batch]])
            if time.time() >= stop_at:
                break
        version += 1
    kv.close()
    out.put(rows)


def under_load(name: str, kind: str, path: Path, keys: list[str], batch: int, seconds: float = 3.0) -> tuple[float, float]:
    """get/s in this process while another process upserts batches into the same file, and its rows/s."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 1.0  # let the writer process import and open first
    proc = ctx.Process(target=_writer, args=(kind, path, keys, batch, start_at + seconds, out))
    proc.start()
    kv, rng, gets = _open(kind, path), random.Random(3), 0
    while time.time() < start_at:
        time.sleep(0.01)
    while time.time() < start_at + seconds:
        for key in rng.choices(keys, k=200):
            if kv.get(key) is None:
                raise AssertionError(f"{name}: {key} vanished while another process wrote")
        gets += 200
    kv.close()
    written = out.get(timeout=60)
    proc.join()
    print(f"{name:28s} get {gets / seconds:>10,.0f}/s while another process upserts {written / seconds:>10,.0f} rows/s", flush=True)
    return gets / seconds, written / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--redis", metavar="URL", help="also measure keel's redis:// engine, for scale (e.g. redis://127.0.0.1:6379/15)")
    args = parser.parse_args()
    keys = [f"trending/item-{i:08d}" for i in range(args.keys)]
    value = b"x" * 64
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"{args.keys:,} keys, batches of {args.batch}, 64-byte values; ops per second (higher is better)")
        keel_full = measure("keel file:// (sync FULL)", open_kv(f"file://{root}/full.db"), keys, args.batch, value)
        keel_normal = measure(
            "keel file:// (sync NORMAL)", open_kv(f"file://{root}/normal.db", synchronous="NORMAL"), keys, args.batch, value
        )
        lmdb_sync = measure("LMDB (sync)", LmdbKv(root / "sync.lmdb"), keys, args.batch, value)
        if args.redis:
            measure("keel redis:// (loopback)", open_kv(args.redis), keys, args.batch, value)
        print("-- one process reads while another writes the same file --")
        keel_load = under_load("keel file:// (sync FULL)", "keel:FULL", root / "full.db", keys, args.batch)
        lmdb_load = under_load("LMDB (sync)", "lmdb", root / "sync.lmdb", keys, args.batch)
        print("ratio keel(FULL)/LMDB(sync):   " + "  ".join(f"{op} {keel_full[op] / lmdb_sync[op]:.2f}" for op in keel_full))
        print("ratio keel(NORMAL)/LMDB(sync): " + "  ".join(f"{op} {keel_normal[op] / lmdb_sync[op]:.2f}" for op in keel_normal))
        print(f"ratio under load keel/LMDB:    get {keel_load[0] / lmdb_load[0]:.2f}  concurrent upsert {keel_load[1] / lmdb_load[1]:.2f}")


if __name__ == "__main__":
    main()
