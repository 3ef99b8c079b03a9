"""Apply retention to one store: remove old rounds, then unreferenced chunks, then free pages.

The order is the crash-safe one (restic's "unreference before delete"): rounds and their
``chunk_metadata`` rows go first, in one transaction; a crash after it leaves only orphan chunks,
which the next run (or the next writer to open the database) removes. Orphan removal is skipped
while any restore holds a lease on this store, because a round replaced during that restore may
still be read from chunks that no visible round references any more.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from chunkd.retention import RetentionPlan, plan_retention
from chunkd.store import ChunkStore


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
            "chunks_removed": self.chunks_removed,
            "bytes_removed": self.bytes_removed,
            "bytes_returned": self.bytes_returned,
            "dry_run": self.dry_run,
        }


def prune_store(
    store: ChunkStore,
    keep_rounds: int,
    *,
    leased: Collection[int] = (),
    dry_run: bool = False,
    any_lease: bool = False,
) -> PruneResult:
    """Apply ``keep_rounds`` to ``store``; with ``dry_run`` only say what would go."""
    plan = plan_retention(store.round_numbers(), keep_rounds, leased)
    if dry_run:
        return PruneResult(plan, True, 0, 0, 0)
    store.delete_rounds(plan.remove)
    chunks = nbytes = 0
    if not any_lease and not leased:
        chunks, nbytes = store.remove_orphan_chunks()
    returned = store.vacuum_free_pages()
    return PruneResult(plan, False, chunks, nbytes, returned)
