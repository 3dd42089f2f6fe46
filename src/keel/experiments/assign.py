"""Assigning units to an experiment's variants: deterministic, stateless, the same everywhere.

A unit's variant depends only on the experiment's name, the unit and the variant weights:
``blake2b(experiment + ":" + unit)`` (first 8 bytes) gives a point in [0, 1), and the variants
cut [0, 1) into consecutive slices sized by their normalized weights. The gateway, a batch job and
a notebook therefore agree without sharing state, and different experiments split units
independently of each other (the experiment name salts the hash).

Variants are laid out in the order of their *names*, not of their declaration, so reordering a
``variants={...}`` literal never reshuffles units. Changing weights moves only the units near the
slice boundaries that moved; renaming the experiment reshuffles everyone.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from hashlib import blake2b
from typing import overload

import numpy as np
import pyarrow as pa

from keel.errors import ConfigError, ValidationError

_TOP_53_BITS = 11  # a 64-bit hash shifted right by 11 fits a float64 mantissa exactly: no rounding to 1.0
_SCALE = 2.0**-53


@dataclass(frozen=True)
class VariantLayout:
    """An experiment's variants as slices of [0, 1): `names[i]` owns [bounds[i-1], bounds[i])."""

    experiment: str
    names: tuple[str, ...]
    bounds: tuple[float, ...]  # upper bound of every slice but the last, which ends at 1
    salt: bytes

    @classmethod
    def of(cls, experiment: str, variants: Mapping[str, float]) -> VariantLayout:
        """Validate `variants` (name -> weight) and precompute the slices."""
        if not variants:
            raise ConfigError(f"experiment {experiment!r} has no variants: give at least one name -> weight")
        for name, weight in variants.items():
            if not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
                raise ConfigError(
                    f"experiment {experiment!r}: variant {name!r} has weight {weight!r}; "
                    "weights must be finite numbers >= 0"
                )
        total = math.fsum(variants.values())
        if total <= 0:
            raise ConfigError(f"experiment {experiment!r}: the variant weights sum to 0; give one a positive weight")
        names = tuple(sorted(variants))
        bounds, running = [], 0.0
        for name in names[:-1]:
            running += variants[name] / total
            bounds.append(running)
        return cls(experiment, names, tuple(bounds), f"{experiment}:".encode())

    def point(self, unit: str) -> float:
        """The unit's position in [0, 1)."""
        digest = blake2b(self.salt + unit.encode(), digest_size=8).digest()
        return (int.from_bytes(digest, "big") >> _TOP_53_BITS) * _SCALE

    def variant_of(self, unit: str) -> str:
        return self.names[bisect_right(self.bounds, self.point(unit))]

    def variants_of(self, units: Sequence[str]) -> np.ndarray:
        """Variant indexes (into `names`) of `units`; the hashing is per unit, the slicing vectorized."""
        salt = self.salt
        digests = b"".join(blake2b(salt + u.encode(), digest_size=8).digest() for u in units)
        points = (np.frombuffer(digests, dtype=">u8") >> np.uint64(_TOP_53_BITS)).astype(np.float64) * _SCALE
        return np.searchsorted(np.asarray(self.bounds, dtype=np.float64), points, side="right")


@lru_cache(maxsize=4096)
def _layout(experiment: str, variants: tuple[tuple[str, float], ...]) -> VariantLayout:
    return VariantLayout.of(experiment, dict(variants))


def layout(experiment: str, variants: Mapping[str, float]) -> VariantLayout:
    """The (cached) slices of `experiment`; hold on to it to assign many units without re-validating."""
    return _layout(experiment, tuple(variants.items()))


def assign_one(experiment: str, unit: str, variants: Mapping[str, float]) -> str:
    """The variant of one unit: the gateway's per-request path (about 1 µs; see benchmarks/RESULTS.md)."""
    return _layout(experiment, tuple(variants.items())).variant_of(unit)


@overload
def assign(experiment: str, units: Sequence[str], variants: Mapping[str, float]) -> list[str]: ...


@overload
def assign(experiment: str, units: pa.Array | pa.ChunkedArray, variants: Mapping[str, float]) -> pa.Array: ...


def assign(
    experiment: str,
    units: Sequence[str] | pa.Array | pa.ChunkedArray,
    variants: Mapping[str, float],
) -> list[str] | pa.Array:
    """The variant of each unit, in order: a list for a sequence, a string Arrow array for Arrow input.

    Arrow units of another type are cast to string first (an int64 ``42`` is the unit ``"42"``,
    as the gateway sees it in a URL). A null unit raises ``ValidationError``: it has no variant.
    """
    plan = layout(experiment, variants)
    if isinstance(units, pa.Array | pa.ChunkedArray):
        if units.null_count:
            first = units.is_null().to_pylist().index(True)
            raise ValidationError([{"index": first, "field": "unit", "error": "null unit: it cannot be assigned"}])
        if not pa.types.is_string(units.type) and not pa.types.is_large_string(units.type):
            units = units.cast(pa.string())
        indexes = plan.variants_of(units.to_pylist())
        names = pa.array(plan.names, type=pa.string())
        return pa.DictionaryArray.from_arrays(pa.array(indexes, type=pa.int32()), names).dictionary_decode()
    for index, unit in enumerate(units):
        if not isinstance(unit, str):
            raise ValidationError([{"index": index, "field": "unit", "error": f"unit {unit!r} is not a string"}])
    names_of = plan.names
    return [names_of[i] for i in plan.variants_of(units).tolist()]
