"""Seeded, stable row orderings for splits.

A row's rank is a 64-bit BLAKE2b hash of ``(seed, salt, row id)``; sorting by it gives an order that
depends only on the seed and the row ids, not on the row order in the files, the numpy version or the
machine. Taking the first N rows of that order is a seeded random sample; two different salts give
independent orders.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from jaxtyping import Int

from vitmech.errors import DataError


def hash_rank(ids: Sequence[object], seed: int, salt: str) -> Int[np.ndarray, " N"]:
    """Row indices sorted by ``blake2b(f"{seed}|{salt}|{id}")`` (ties broken by index)."""
    prefix = f"{int(seed)}|{salt}|".encode()
    keys = np.fromiter(
        (int.from_bytes(hashlib.blake2b(prefix + str(i).encode(), digest_size=8).digest(), "little") for i in ids),
        dtype=np.uint64,
        count=len(ids),
    )
    return np.argsort(keys, kind="stable")


def check_unique(ids: Sequence[object], what: str) -> None:
    """Raise if ids repeat (a hash order over repeated ids would put copies in different splits)."""
    if len(set(ids)) != len(ids):
        raise DataError(f"{what}: row ids are not unique, so splits could not be kept disjoint")


def n_from_fraction(n: int, fraction: float) -> int:
    """``round(n * fraction)``, the count a fraction of ``n`` rows gets."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"a split fraction must be in [0, 1), got {fraction}")
    return int(round(n * fraction))


__all__ = ["hash_rank", "check_unique", "n_from_fraction"]
