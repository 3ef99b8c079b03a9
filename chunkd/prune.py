"""Apply retention to one store: plan, then remove round versions, chunks, and free pages.

Decide, then do (restic's ``PlanPrune`` / ``Execute``): :func:`~chunkd.retention.plan_versions`
says which versions go (``--dry-run`` prints just that); the store then removes them in one
transaction, collects the chunks nothing needs any more (:mod:`chunkd.store.gc`) and returns free
pages to the filesystem only when they are many (see ``ChunkStore.return_free_space``). The order
is the crash-safe one ("unreference before delete"): a crash after the first step leaves only
orphan chunks, which the next run (or the next writer to open the database) removes.

Leased rounds (being restored) keep every version, so every chunk a restore needs stays
referenced: garbage collection never has to stop for a reader.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from dataclasses import dataclass

from chunkd.deltas import promote_orphaned_deltas
from chunkd.retention import RetentionPlan, plan_versions
from chunkd.store import ChunkStore, RoundInfo

#: Yields the rounds leased now and holds new leases back while open (the daemon's LeaseTable).
LeaseGate = Callable[[], contextlib.AbstractContextManager[Collection[int]]]


@dataclass(frozen=True, slots=True)
class PruneResult:
    plan: RetentionPlan
    dry_run: bool
    chunks_removed: int
    bytes_removed: int
    bytes_returned: int

    def log_fields(self) -> dict[str, object]:
        return {
            "rounds_removed": list(self.plan.remove),
            "rounds_kept": len(self.plan.keep),
            "rounds_held": list(self.plan.held),
            "generations_removed": [list(g) for g in self.plan.generations_removed],
            "chunks_removed": self.chunks_removed,
            "bytes_removed": self.bytes_removed,
            "bytes_returned": self.bytes_returned,
            "dry_run": self.dry_run,
        }


def just_ingested(versions: list[RoundInfo]) -> int | None:
    """The round whose current version was committed last (None before format 3 recorded it)."""
    dated = [v for v in versions if v.current and v.ingest_seq is not None]
    return max(dated, key=lambda v: v.ingest_seq or 0).round_num if dated else None


def prune_store(
    store: ChunkStore,
    keep_rounds: int,
    *,
    leased: Collection[int] = (),
    lease_gate: LeaseGate | None = None,
    dry_run: bool = False,
    any_lease: bool = False,  # accepted for old callers; leases no longer stop GC
) -> PruneResult:
    """Apply ``keep_rounds`` to ``store``; with ``dry_run`` only say what would go.

    ``lease_gate`` (the daemon's): a context that yields the rounds leased now and holds new
    leases back until it ends; the plan and the delete run inside it, so a restore that starts
    meanwhile waits for the delete instead of losing its round mid-read. Garbage collection and
    the return of free pages run after it. Without it, ``leased`` is taken as given.
    """
    with lease_gate() if lease_gate is not None else contextlib.nullcontext(leased) as held:
        versions = store.list_versions()
        plan = plan_versions(versions, keep_rounds, held, just_ingested(versions))
        if dry_run:
            return PruneResult(plan, True, 0, 0, 0)
        removed_rounds = set(plan.remove)
        removed_generations = set(plan.generations_removed)
        doomed = [
            v
            for v in versions
            if (v.current and v.round_num in removed_rounds)
            or (not v.current and (v.round_num, v.generation) in removed_generations)
        ]
        store.delete_versions(doomed)
    promote_orphaned_deltas(store)  # pruned chain starts: their successors become key chunks
    chunks, nbytes = store.collect_garbage()
    returned = store.return_free_space()
    return PruneResult(plan, False, chunks, nbytes, returned)
