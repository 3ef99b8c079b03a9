"""RoundWriter: one round into the store, in the crash-safe write order.

``add_chunk`` for every chunk (bytes committed in batches of ``BATCH_BYTES``), then ``commit``
(one transaction that makes the round visible and moves a rewritten round's earlier version to
``round_history``), or ``abort`` (removes the chunk rows this writer added and nothing needs, so a
rejected file leaves the database as it was).
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zstandard

from chunkd.manifest import RoundLayout
from chunkd.runs import Written, assign_run
from chunkd.store.core import BATCH_BYTES, source_upsert
from chunkd.store.reading import wrap_error
from chunkd.store.records import RoundInfo, SourceRecord
from chunkd.store.runs import SqlRuns

if TYPE_CHECKING:
    from chunkd.store.core import ChunkStore


@dataclass(frozen=True, slots=True)
class CommitResult:
    #: the version this commit superseded (now an earlier generation), or None for a new round
    superseded: RoundInfo | None
    generation: int
    run: int


class RoundWriter:
    def __init__(self, store: ChunkStore) -> None:
        self._store = store
        self._conn = store._conn
        self._added: list[str] = []
        self._batch_bytes = 0
        self.new_chunks = 0
        self.new_bytes = 0  # as stored (after the codec)
        self.new_raw_bytes = 0

    def _ensure_txn(self) -> None:
        if not self._conn.in_transaction:
            self._store._execute("BEGIN IMMEDIATE")

    def add_chunk(
        self,
        chunk_hash: str,
        codec_name: str,
        stored: bytes | memoryview,
        raw_size: int,
        base_hash: str | None = None,
    ) -> bool:
        """Store a chunk's bytes unless they are already there; True if they were new."""
        self._ensure_txn()
        cur = self._store._execute(
            "INSERT OR IGNORE INTO chunk_data (chunk_hash, data, codec, raw_size, base_hash)"
            " VALUES (?, ?, ?, ?, ?)",
            (chunk_hash, stored, codec_name, raw_size, base_hash),
        )
        if cur.rowcount != 1:
            return False
        self._store._execute(
            "INSERT INTO chunk_info (chunk_hash, codec, raw_size, stored_size, base_hash)"
            " VALUES (?, ?, ?, ?, ?)",
            (chunk_hash, codec_name, raw_size, len(stored), base_hash),
        )
        self._added.append(chunk_hash)
        self.new_chunks += 1
        self.new_bytes += len(stored)
        self.new_raw_bytes += raw_size
        self._batch_bytes += len(stored)
        if self._batch_bytes >= BATCH_BYTES:
            self.flush()
        return True

    def flush(self) -> None:
        """Commit the chunk bytes written so far (they stay invisible until :meth:`commit`).

        Restores of this database in this process go first, for a bounded time (fairness)."""
        if self._conn.in_transaction:
            self._store.gate.before_commit()
            self._store._execute("COMMIT")
        self._batch_bytes = 0

    def commit(
        self,
        *,
        round_num: int,
        layout: RoundLayout,
        residue: bytes,
        chunks: list[tuple[int, str, str, int]],
        source: SourceRecord | None,
    ) -> CommitResult:
        """Make the round visible; ``chunks`` = ``[(chunk_id, hash, parts_info, flat_size)]``.

        The file's ``sources`` row commits in the same transaction: a crash can never leave a
        round whose file would be taken again (and, once pruned, come back). An existing round
        with that number becomes an earlier generation (the caller has decided that this is a
        rewrite of the same file, see ``ingest``). The version's run is decided here, inside the
        transaction, from the file's write time and every stored version (:mod:`chunkd.runs`).
        """
        c = self._conn
        packed_residue = zstandard.ZstdCompressor(level=3).compress(residue)
        written_at = source.identity.mtime_ns if source is not None else None
        try:
            self._ensure_txn()
            superseded = None
            generation = 0
            old = c.execute(
                "SELECT round_num, file_sha256, file_size, flat_bytes, chunk_count, new_chunks,"
                " new_bytes, source_path, created_at, generation, run, file_mtime_ns, ingest_seq"
                " FROM rounds WHERE round_num = ?",
                (round_num,),
            ).fetchone()
            replacing = None
            if old is not None:
                superseded = RoundInfo(*old, current=False)
                generation = self._next_generation(round_num)
                replacing = Written(superseded.run, round_num, 0)
            run = assign_run(round_num, written_at, SqlRuns(c), replacing=replacing)
            if old is not None:
                self._move_to_history(round_num)
            c.executemany(
                "INSERT INTO chunk_metadata (round_num, chunk_id, chunk_hash, parts_info,"
                " flat_size) VALUES (?, ?, ?, ?, ?)",
                [(round_num, cid, h, parts, size) for cid, h, parts, size in chunks],
            )
            c.execute(
                "INSERT INTO rounds (round_num, file_sha256, file_size, flat_bytes, chunk_count,"
                " new_chunks, new_bytes, layout, residue, source_path, generation, run,"
                " file_mtime_ns, ingest_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    round_num,
                    layout.file_sha256,
                    layout.file_size,
                    layout.flat_bytes,
                    len(chunks),
                    self.new_chunks,
                    self.new_bytes,
                    layout.to_json(),
                    packed_residue,
                    source.path if source else None,
                    generation,
                    run,
                    written_at,
                    self._next_ingest_seq(),
                ),
            )
            if source is not None:
                c.execute(*source_upsert(source))
            self._store.gate.before_commit()
            c.execute("COMMIT")
        except sqlite3.Error as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            self.abort()
            raise wrap_error(e, self._store.path, f"commit of round {round_num}") from None
        self._added.clear()
        return CommitResult(superseded, generation, run)

    def _next_generation(self, round_num: int) -> int:
        """One more than any generation this round number has had that is still stored: a
        ``forget`` of the current version may have left an earlier one current."""
        row = self._conn.execute(
            "SELECT MAX(g) FROM (SELECT MAX(generation) AS g FROM rounds WHERE round_num = ?"
            " UNION ALL SELECT MAX(generation) FROM round_history WHERE round_num = ?)",
            (round_num, round_num),
        ).fetchone()
        return int(row[0]) + 1

    def _next_ingest_seq(self) -> int:
        row = self._conn.execute(
            "SELECT MAX(s) FROM (SELECT MAX(ingest_seq) AS s FROM rounds"
            " UNION ALL SELECT MAX(ingest_seq) FROM round_history)"
        ).fetchone()
        return int(row[0] or 0) + 1

    def _move_to_history(self, round_num: int) -> None:
        c = self._conn
        c.execute(
            "INSERT INTO round_history (round_num, generation, run, file_sha256, file_size,"
            " flat_bytes, chunk_count, new_chunks, new_bytes, layout, residue, source_path,"
            " created_at, file_mtime_ns, ingest_seq) SELECT round_num, generation, run,"
            " file_sha256, file_size, flat_bytes, chunk_count, new_chunks, new_bytes, layout,"
            " residue, source_path, created_at, file_mtime_ns, ingest_seq"
            " FROM rounds WHERE round_num = ?",
            (round_num,),
        )
        history_id = c.execute("SELECT last_insert_rowid()").fetchone()[0]
        c.execute(
            "INSERT INTO round_history_chunks (history_id, chunk_id, chunk_hash, parts_info,"
            " flat_size) SELECT ?, chunk_id, chunk_hash, parts_info, flat_size"
            " FROM chunk_metadata WHERE round_num = ?",
            (history_id, round_num),
        )
        c.execute("DELETE FROM chunk_metadata WHERE round_num = ?", (round_num,))
        c.execute("DELETE FROM rounds WHERE round_num = ?", (round_num,))

    def abort(self) -> None:
        """Undo this writer's chunk rows (best effort: leftovers are orphans, removed later)."""
        c = self._conn
        try:
            if c.in_transaction:
                c.execute("ROLLBACK")
        except sqlite3.Error:
            return
        added, self._added = self._added, []
        if added:
            # best effort: what stays is an orphan, removed when the next writer opens
            with contextlib.suppress(Exception):
                self._store.collect_garbage(candidates=added)
