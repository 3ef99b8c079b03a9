"""Which rounds retention removes: pure policy, no I/O.

``chunk_keep_rounds = N`` keeps the N highest-numbered rounds (0 keeps everything). A round that a
restore is reading (a lease, see :mod:`chunkd.daemon.leases`) is never removed; it stays until a
later run once the lease is released.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    keep: tuple[int, ...]
    remove: tuple[int, ...]
    #: rounds that policy would remove but a lease protects this time
    held: tuple[int, ...]


def plan_retention(
    round_nums: Iterable[int], keep_rounds: int, leased: Collection[int] = ()
) -> RetentionPlan:
    ordered = sorted(set(round_nums))
    if keep_rounds < 0:
        raise ValueError("keep_rounds must be >= 0")
    if keep_rounds == 0 or len(ordered) <= keep_rounds:
        return RetentionPlan(keep=tuple(ordered), remove=(), held=())
    cut = len(ordered) - keep_rounds
    old, newest = ordered[:cut], ordered[cut:]
    held = tuple(r for r in old if r in leased)
    remove = tuple(r for r in old if r not in leased)
    return RetentionPlan(keep=tuple(sorted(newest + list(held))), remove=remove, held=held)
