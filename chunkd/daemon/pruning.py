"""Retention per change: which clients a retention pass visits, and the prune a lane runs.

Issue 20: every ``retention_interval`` the daemon queued a prune on every lane, and each prune
opened its database, whether or not anything had changed (500 clients at ``"1s"``: 158% CPU).
Now a pass visits only the clients in :class:`ChangedClients`: those whose stored rounds changed
since their last pass (an ingest, a ``forget``), whose last prune could not finish (leased rounds
kept, or it failed, or the queue was full), and, once, every client with a database when the
daemon starts (its config may have changed meanwhile). A pass with nothing changed opens nothing,
and neither does a changed client whose rounds, as its lane last read them, are within what it
keeps (:func:`chunkd.retention.removes_nothing`): a first round written to 10,000 clients marks
them all, and opening each to find nothing to remove cost a minute of CPU.
An explicit ``prune`` request still prunes whatever it names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from chunkd import log
from chunkd.daemon.stores import ClientDatabase
from chunkd.forget import ForgetResult, forget_version
from chunkd.prune import PruneResult, prune_store
from chunkd.retention import plan_versions
from chunkd.store import ChunkStore


class ChangedClients:
    """Client ids with retention work: any thread marks, the retention pass takes them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()

    def mark(self, client_id: str) -> None:
        with self._lock:
            self._ids.add(client_id)

    def take(self) -> list[str]:
        with self._lock:
            ids, self._ids = self._ids, set()
        return sorted(ids)

    def __contains__(self, client_id: str) -> bool:
        with self._lock:
            return client_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


def nothing_to_prune(keep_rounds: int, dry_run: bool) -> PruneResult:
    """The result for a client with no database: nothing stored, nothing opened or created."""
    return PruneResult(plan_versions([], keep_rounds), dry_run, 0, 0, 0)


def forget_job(
    store: ChunkStore,
    *,
    round_num: int,
    generation: int | None,
    lease_gate: Callable[[], AbstractContextManager[frozenset[int]]],
    dry_run: bool,
    logger: Any,
) -> ForgetResult:
    """``chunkd forget`` on the client's lane (its database's only writer); logged at warning,
    because it removes a version that retention would have kept."""
    result = forget_version(store, round_num, generation, lease_gate=lease_gate, dry_run=dry_run)
    if not dry_run:
        logger.warning(log.ROUND_FORGOTTEN, **result.log_fields())
    return result


def prune_job(
    store: ChunkStore,
    db: ClientDatabase,
    *,
    keep_rounds: int,
    lease_gate: Callable[[], AbstractContextManager[frozenset[int]]],
    dry_run: bool,
    logger: Any,
) -> PruneResult:
    """Apply retention on the client's lane; a prune that leased rounds held back is not done,
    so the client stays marked for the next pass."""
    result = prune_store(store, keep_rounds, lease_gate=lease_gate, dry_run=dry_run)
    if result.plan.remove or result.chunks_removed or dry_run:
        logger.info(log.RETENTION_PRUNED, **result.log_fields())
    if not dry_run:
        db.note_held(store, pruned=True)
        if result.plan.held:
            db.changed()
    return result
