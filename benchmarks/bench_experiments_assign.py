"""Variant assignment: keel (blake2b, 53-bit points) against GrowthBook's SDK (FNV-1a, 10,000 buckets).

Measures, in the same run, the per-request path (one unit at a time, what the gateway calls) and a
batch of units (what a job or a notebook calls), and prints keel's time over GrowthBook's.
Needs the peer: `pip install growthbook`.

    python benchmarks/bench_experiments_assign.py [--units 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from keel.experiments.assign import assign, assign_one, layout

try:
    from growthbook.core import chooseVariation, gbhash, getBucketRanges
except ImportError as exc:  # pragma: no cover - a benchmark's own prerequisite
    raise SystemExit("this benchmark compares with GrowthBook: `pip install growthbook`") from exc

VARIANTS = {"control": 0.5, "treatment": 0.5}


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    units = [f"user-{i}" for i in range(args.units)]
    names = list(VARIANTS)
    weights = list(VARIANTS.values())

    def growthbook_one(unit: str) -> str:
        # What GrowthBook's SDK does per evaluation: hash, ranges from the weights, pick.
        return names[chooseVariation(gbhash("exp", unit, 2) or 0.0, getBucketRanges(len(names), 1.0, weights))]

    ranges = getBucketRanges(len(names), 1.0, weights)

    def growthbook_batch() -> list[str]:
        return [names[chooseVariation(gbhash("exp", u, 2) or 0.0, ranges)] for u in units]

    plan = layout("exp", VARIANTS)
    rows = [
        ("per unit: keel assign_one(exp, unit, variants)", lambda: [assign_one("exp", u, VARIANTS) for u in units],
         lambda: [growthbook_one(u) for u in units]),
        ("per unit: keel layout(...).variant_of(unit), precomputed", lambda: [plan.variant_of(u) for u in units],
         growthbook_batch),
        ("batch: keel assign(exp, units, variants)", lambda: assign("exp", units, VARIANTS), growthbook_batch),
    ]
    print(f"{args.units:,} units, best of {args.repeat}; µs per unit (lower is better)")
    print(f"{'path':62} {'keel':>8} {'growthbook':>11} {'keel/gb':>8}")
    for label, keel_fn, peer_fn in rows:
        keel_s = best_of(args.repeat, keel_fn) / args.units * 1e6
        peer_s = best_of(args.repeat, peer_fn) / args.units * 1e6
        print(f"{label:62} {keel_s:8.2f} {peer_s:11.2f} {keel_s / peer_s:8.2f}")


if __name__ == "__main__":
    main()
