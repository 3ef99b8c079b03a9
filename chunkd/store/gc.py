"""Which chunks garbage collection removes: one pure predicate for every caller.

A chunk is needed while a stored round version (current or an earlier generation) references it,
or while a needed chunk is a delta coded against it (transitively: chains may be several links
long). Everything else is dead. Prune, the clean-up when a writer opens a database, and the undo of
an aborted ingest all decide with :func:`plan_gc`; the store only executes the plan (restic's
``PlanPrune`` / ``Execute``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GcPlan:
    dead: frozenset[str]
    dead_bytes: int


def needed_chunks(referenced: Iterable[str], bases: Mapping[str, str | None]) -> set[str]:
    """``referenced`` and every base their delta chains reach."""
    needed: set[str] = set()
    for start in referenced:
        chunk: str | None = start
        while chunk is not None and chunk not in needed:
            needed.add(chunk)
            chunk = bases.get(chunk)
    return needed


def plan_gc(
    referenced: Iterable[str],
    bases: Mapping[str, str | None],
    sizes: Mapping[str, int],
    candidates: Iterable[str] | None = None,
) -> GcPlan:
    """Dead chunks among ``candidates`` (default: every stored chunk, the keys of ``sizes``).

    ``bases`` maps each stored chunk to the chunk its delta is coded against (None for a key).
    """
    needed = needed_chunks(referenced, bases)
    pool = sizes.keys() if candidates is None else candidates
    dead = frozenset(h for h in pool if h in sizes and h not in needed)
    return GcPlan(dead, sum(sizes[h] for h in dead))
