"""Removing from a store, in the order that keeps readers safe: versions, then chunks, then pages.

Retention and ``forget`` unreference before they delete (docs/DESIGN.md "Retention: plan, then
execute", "One dead-chunk predicate"): round versions go first (rows only, one transaction), then
the chunks nothing needs any more (the pure plan of :mod:`chunkd.store.gc`, executed in bounded
transactions), then the free pages beyond about one round (:mod:`chunkd.store.compaction`).
Mixed into :class:`~chunkd.store.core.ChunkStore`; separate from core, which opens the store and
writes into it, because this is the one place a writer gives rows, chunks and space back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

from chunkd.store.compaction import compact, newest_first, round_pages
from chunkd.store.fairness import FairnessGate
from chunkd.store.forgetting import Statement, forget_statements
from chunkd.store.gc import GcPlan, plan_gc
from chunkd.store.reading import wrap_error
from chunkd.store.records import RoundInfo

#: Garbage collection deletes at most this many chunks per transaction: the writer does not spill
#: its cache, so every page one transaction dirties stays in memory until it commits.
GC_BATCH_CHUNKS = 256


class StoreRemoving:
    """Retention's deletes, garbage collection and free-space return; what they need of the
    store is named below (:class:`~chunkd.store.core.ChunkStore` has it)."""

    path: Path
    _conn: sqlite3.Connection
    gate: FairnessGate
    #: Refuse unless this is the writer and the file is writable now (``ChunkStore``).
    _require_writer: Callable[[], None]
    #: Run statements in one write transaction (``ChunkStore.transaction``).
    transaction: Callable[[list[Statement]], None]
    #: Referenced hashes, bases, sizes (``ChunkReading.chunk_graph``).
    chunk_graph: Callable[[], tuple[set[str], dict[str, str | None], dict[str, int]]]
    #: Every stored version (``StoreReading.list_versions``).
    list_versions: Callable[[], list[RoundInfo]]

    def delete_versions(self, versions: Iterable[RoundInfo]) -> int:
        """Remove round versions (rows only; chunk bytes go with :meth:`collect_garbage`)."""
        self._require_writer()
        statements: list[Statement] = []
        count = 0
        for v in versions:
            count += 1
            if v.current:
                key = (v.round_num,)
                statements.append(("DELETE FROM chunk_metadata WHERE round_num = ?", key))
                statements.append(("DELETE FROM rounds WHERE round_num = ?", key))
            else:
                key = (v.round_num, v.generation)
                statements.append(
                    (
                        "DELETE FROM round_history_chunks WHERE history_id IN (SELECT id FROM"
                        " round_history WHERE round_num = ? AND generation = ?)",
                        key,
                    )
                )
                statements.append(
                    ("DELETE FROM round_history WHERE round_num = ? AND generation = ?", key)
                )
        if statements:
            self.transaction(statements)
        return count

    def forget_version(self, version: RoundInfo) -> None:
        """Remove exactly ``version`` (see :mod:`chunkd.store.forgetting`); rows only."""
        self._require_writer()
        self.transaction(forget_statements(version))

    def delete_rounds(self, round_nums: Iterable[int]) -> int:
        """Remove rounds with every version they have."""
        wanted = set(round_nums)
        return self.delete_versions(v for v in self.list_versions() if v.round_num in wanted)

    def plan_garbage(self, candidates: Iterable[str] | None = None) -> GcPlan:
        referenced, bases, sizes = self.chunk_graph()
        return plan_gc(referenced, bases, sizes, candidates)

    def collect_garbage(self, candidates: Iterable[str] | None = None) -> tuple[int, int]:
        """Delete the chunks nothing needs (:func:`~chunkd.store.gc.plan_gc`); returns
        ``(chunks, stored bytes)``.

        Planned in the first write transaction and deleted in transactions of
        ``GC_BATCH_CHUNKS``: this connection is the database's only writer and nothing it does
        in between references a dead chunk again, so what was dead stays dead, and a crash
        between two batches leaves dead chunks only, which the next run removes.
        """
        self._require_writer()
        c = self._conn
        try:
            c.execute("BEGIN IMMEDIATE")
            plan = self.plan_garbage(candidates)
            dead = newest_first(c, plan.dead)
            for i in range(0, len(dead), GC_BATCH_CHUNKS):
                if not c.in_transaction:
                    c.execute("BEGIN IMMEDIATE")
                batch = dead[i : i + GC_BATCH_CHUNKS]
                marks = ",".join("?" * len(batch))
                c.execute(f"DELETE FROM chunk_data WHERE chunk_hash IN ({marks})", batch)  # noqa: S608
                c.execute(f"DELETE FROM chunk_info WHERE chunk_hash IN ({marks})", batch)  # noqa: S608
                self.gate.before_commit()
                c.execute("COMMIT")
            if c.in_transaction:
                c.execute("COMMIT")
        except sqlite3.Error as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise wrap_error(e, self.path, "garbage collection") from None
        return len(plan.dead), plan.dead_bytes

    def remove_orphan_chunks(self) -> tuple[int, int]:
        return self.collect_garbage()

    def orphan_chunk_count(self) -> int:
        return len(self.plan_garbage().dead)

    def round_pages(self) -> int:
        """One round's worth of pages (:func:`~chunkd.store.compaction.round_pages`)."""
        return round_pages(self._conn)

    def return_free_space(self, *, allowance_pages: int | None = None) -> int:
        """Give the free pages beyond ``allowance_pages`` (default: :meth:`round_pages`) back to
        the filesystem; returns the bytes returned.

        At steady state a pruned round's pages are about one round and stay for the next round
        to reuse, so nothing moves. Beyond that, the chunks past the new end are copied below it
        and the file is cut (:mod:`chunkd.store.compaction`), in transactions of at most
        ``BATCH_BYTES``.
        """
        from chunkd.store.core import BATCH_BYTES  # core imports this module: read it at call time

        self._require_writer()
        allowance = self.round_pages() if allowance_pages is None else allowance_pages
        before = self.path.stat().st_size
        try:
            compact(self._conn, allowance, BATCH_BYTES, self.gate.before_commit)
        except sqlite3.Error as e:
            raise wrap_error(e, self.path, "incremental vacuum") from None
        return before - self.path.stat().st_size

    def vacuum_free_pages(self) -> int:
        """Every free page back to the filesystem now (tests, tools)."""
        return self.return_free_space(allowance_pages=0)
