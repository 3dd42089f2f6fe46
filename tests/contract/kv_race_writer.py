"""One writer process of the kv contract's process race (tests/contract/test_kv.py); a module of its
own so that a ``spawn``ed process can import it.

Why rounds: left alone, two writers on one SQLite file barely overlap (the one holding the write
lock runs on while the other's busy handler sleeps), and under load one may even finish before the
other starts. So both writers go in rounds of ``ROUND`` batches, and wait for each other at a
barrier before every round: each round both start together, and the store sees their writes to the
same keys mixed all the way through. A writer that never meets the other (the processes were
serialized somehow) fails at the barrier's timeout instead of passing without a race.

After each batch a writer publishes how many batches it has written and looks at the other's count;
when it moved since this writer's previous batch, the other wrote in between, and the writer counts
one interleaving (the test asserts there were some).
"""

from __future__ import annotations

import random
from typing import Any

from keel.kv import open_kv

PROGRESS, INTERLEAVINGS = (0, 1), 2  # indices into the shared counters
ROUND = 5  # batches per round


def write(url: str, seed: int, keys: int, versions: int, barrier: Any, counters: Any) -> None:
    me, other = PROGRESS[seed % 2], PROGRESS[1 - seed % 2]
    kv = open_kv(url)
    order = [(k, v) for k in range(keys) for v in range(1, versions + 1) if v % 2 == seed % 2]
    random.Random(seed).shuffle(order)
    batches = [order[i : i + 10] for i in range(0, len(order), 10)]
    others_before = counters[other]
    for n, batch in enumerate(batches):
        if n % ROUND == 0:
            barrier.wait(timeout=120)
        kv.upsert_many([(f"race/{k}", v, str(v).encode()) for k, v in batch])
        counters[me] = n + 1  # only this process writes its own count
        others_now = counters[other]
        if others_now != others_before:
            with counters.get_lock():
                counters[INTERLEAVINGS] += 1
        others_before = others_now
    kv.close()
