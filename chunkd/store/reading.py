"""Everything a store answers without writing: rounds, their versions, chunks and figures.

Mixed into :class:`~chunkd.store.core.ChunkStore`; a reader and the writer share these queries.
This module holds the read transaction (:meth:`StoreReading.snapshot`) and the queries on rounds,
figures and files taken; the queries on chunks and their delta chains are
:class:`~chunkd.store.chunk_reading.ChunkReading`'s, which :class:`StoreReading` takes in.
Listing and figures read only narrow tables (``rounds`` without its blobs, ``chunk_info``), so
``chunkd list`` costs O(rounds + chunks), never O(bytes).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import zstandard

from chunkd.errors import BusyError, IntegrityError, NotFoundError, StoreError
from chunkd.manifest import RoundLayout
from chunkd.store.chunk_reading import ChunkReading
from chunkd.store.records import (
    ChunkRef,
    FileIdentity,
    RoundInfo,
    SourceRecord,
    StoreStats,
)

_ROUND_COLUMNS = (
    "round_num, file_sha256, file_size, flat_bytes, chunk_count, new_chunks, new_bytes,"
    " source_path, created_at, generation, run, file_mtime_ns, ingest_seq"
)


#: Stored bytes of the chunks that earlier generations need and no current round does (a delta's
#: bases count as needed by whoever needs the delta): narrow tables only, O(chunk references).
_GENERATIONS_ONLY_BYTES = """
WITH RECURSIVE
  cur(h) AS (SELECT chunk_hash FROM chunk_metadata
             UNION SELECT i.base_hash FROM chunk_info i JOIN cur ON i.chunk_hash = cur.h
             WHERE i.base_hash IS NOT NULL),
  old(h) AS (SELECT chunk_hash FROM round_history_chunks
             UNION SELECT i.base_hash FROM chunk_info i JOIN old ON i.chunk_hash = old.h
             WHERE i.base_hash IS NOT NULL)
SELECT COALESCE(SUM(i.stored_size), 0) FROM chunk_info i JOIN old ON i.chunk_hash = old.h
WHERE old.h NOT IN (SELECT h FROM cur)
"""


def wrap_error(e: sqlite3.Error, path: Path, what: str) -> StoreError:
    if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
        return BusyError(f"database {path} is busy ({what}): {e}")
    return StoreError(f"database {path}: {what} failed: {e}")


class StoreReading(ChunkReading):
    """Read queries over ``self._conn`` (set by the concrete store); the chunk queries are
    inherited from :class:`~chunkd.store.chunk_reading.ChunkReading`."""

    path: Path
    _conn: sqlite3.Connection

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one committed state of the database (one read transaction; a no-op
        inside a transaction already open on this connection).

        The store runs in rollback-journal mode: the transaction holds SHARED, so a writer's
        commit waits for it (up to ``busy_timeout``). Callers keep it to a few rows: one round's
        descriptors, or one chunk's chain, never a whole round's bytes.
        """
        if self._conn.in_transaction:
            yield
            return
        try:
            self._conn.execute("BEGIN")
        except sqlite3.Error as e:
            raise wrap_error(e, self.path, "read transaction") from None
        try:
            yield
        finally:
            if self._conn.in_transaction:
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.Error as e:
                    raise wrap_error(e, self.path, "end of read transaction") from None

    def _query(self, sql: str, params: Iterable[object] = ()) -> list[tuple]:
        try:
            return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as e:
            raise wrap_error(e, self.path, "query") from None

    # -- rounds and their versions ---------------------------------------------------------------
    def list_rounds(self) -> list[RoundInfo]:
        """The current version of every stored round, by round number."""
        rows = self._query(f"SELECT {_ROUND_COLUMNS} FROM rounds ORDER BY round_num")  # noqa: S608
        return [RoundInfo(*row) for row in rows]

    def list_versions(self) -> list[RoundInfo]:
        """Every stored version, current or earlier generation, oldest first (by order key)."""
        current = self.list_rounds()
        earlier = [
            RoundInfo(*row, current=False)
            for row in self._query(f"SELECT {_ROUND_COLUMNS} FROM round_history")  # noqa: S608
        ]
        return sorted(current + earlier, key=lambda v: v.order_key)

    def round_numbers(self) -> list[int]:
        return [r[0] for r in self._query("SELECT round_num FROM rounds ORDER BY round_num")]

    def get_round(self, round_num: int, generation: int | None = None) -> RoundInfo:
        rows = self._query(
            f"SELECT {_ROUND_COLUMNS} FROM rounds WHERE round_num = ?",  # noqa: S608
            (round_num,),
        )
        if rows and (generation is None or rows[0][9] == generation):
            return RoundInfo(*rows[0])
        if generation is not None:
            old = self._query(
                f"SELECT {_ROUND_COLUMNS} FROM round_history"  # noqa: S608 - constant columns
                " WHERE round_num = ? AND generation = ?",
                (round_num, generation),
            )
            if old:
                return RoundInfo(*old[0], current=False)
        raise NotFoundError(self._not_stored(round_num, generation))

    def _not_stored(self, round_num: int, generation: int | None) -> str:
        stored = self.round_numbers()
        what = f"round {round_num}"
        if generation is not None:
            what += f" generation {generation}"
        if not stored:
            return f"{what} is not stored in {self.path}: no round is stored yet"
        shown = ", ".join(map(str, stored[-20:]))
        more = f" (and {len(stored) - 20} earlier)" if len(stored) > 20 else ""
        return f"{what} is not stored in {self.path}; stored rounds: {shown}{more}"

    def latest_round(self) -> int:
        """The newest current round: highest (run, round number), so a rerun's round 1 is newer
        than the previous run's round 6 (see docs/DESIGN.md "Generations")."""
        rows = self._query("SELECT round_num FROM rounds ORDER BY run DESC, round_num DESC LIMIT 1")
        if not rows:
            raise NotFoundError(f"no round is stored in {self.path}")
        return int(rows[0][0])

    def highest_round(self) -> int | None:
        return self._query("SELECT MAX(round_num) FROM rounds")[0][0]

    def _history_id(self, round_num: int, generation: int) -> int:
        rows = self._query(
            "SELECT id FROM round_history WHERE round_num = ? AND generation = ?",
            (round_num, generation),
        )
        if not rows:
            raise NotFoundError(self._not_stored(round_num, generation))
        return int(rows[0][0])

    def _is_current(self, round_num: int, generation: int | None) -> bool:
        if generation is None:
            return True
        rows = self._query("SELECT generation FROM rounds WHERE round_num = ?", (round_num,))
        return bool(rows) and rows[0][0] == generation

    def read_layout(
        self, round_num: int, generation: int | None = None
    ) -> tuple[RoundLayout, bytes]:
        """The round's layout and its residue bytes (decompressed)."""
        if self._is_current(round_num, generation):
            rows = self._query(
                "SELECT layout, residue FROM rounds WHERE round_num = ?", (round_num,)
            )
        else:
            rows = self._query(
                "SELECT layout, residue FROM round_history WHERE id = ?",
                (self._history_id(round_num, generation or 0),),
            )
        if not rows:
            raise NotFoundError(self._not_stored(round_num, generation))
        layout_json, residue = rows[0]
        try:
            layout = RoundLayout.from_json(layout_json)
            raw = zstandard.ZstdDecompressor().decompress(residue)
        except (ValueError, KeyError, TypeError, zstandard.ZstdError) as e:
            raise IntegrityError(f"round {round_num}: stored layout is damaged: {e}") from None
        return layout, raw

    def read_round(
        self, round_num: int, generation: int | None = None
    ) -> tuple[RoundLayout, bytes, list[ChunkRef]]:
        """Layout, residue and chunk list of a round version, from one consistent snapshot.

        One read transaction: a replacement of the round committed between two separate reads
        would pair the old layout with the new chunks.
        """
        with self.snapshot():
            layout, residue = self.read_layout(round_num, generation)
            chunks = self.round_chunks(round_num, generation)
        return layout, residue, chunks

    def round_chunks(self, round_num: int, generation: int | None = None) -> list[ChunkRef]:
        if self._is_current(round_num, generation):
            rows = self._query(
                "SELECT chunk_id, chunk_hash, parts_info, flat_size FROM chunk_metadata"
                " WHERE round_num = ? ORDER BY chunk_id",
                (round_num,),
            )
        else:
            rows = self._query(
                "SELECT chunk_id, chunk_hash, parts_info, flat_size FROM round_history_chunks"
                " WHERE history_id = ? ORDER BY chunk_id",
                (self._history_id(round_num, generation or 0),),
            )
        return [ChunkRef(*row) for row in rows]

    def newest_versions(self, count: int) -> list[RoundInfo]:
        """The ``count`` newest versions by order key, newest first: two range scans of the
        ``(run, round_num)`` indexes, whatever the number of rounds stored."""
        order = " ORDER BY run DESC, round_num DESC, generation DESC LIMIT ?"
        current = [
            RoundInfo(*row)
            for row in self._query(f"SELECT {_ROUND_COLUMNS} FROM rounds" + order, (count,))  # noqa: S608
        ]
        earlier = [
            RoundInfo(*row, current=False)
            for row in self._query(
                f"SELECT {_ROUND_COLUMNS} FROM round_history" + order,  # noqa: S608
                (count,),
            )
        ]
        return sorted(current + earlier, key=lambda v: v.order_key, reverse=True)[:count]

    # -- figures ---------------------------------------------------------------------------------
    def stats(self) -> StoreStats:
        rounds, file_bytes, referenced = self._query(
            "SELECT COUNT(*), COALESCE(SUM(file_size), 0), COALESCE(SUM(flat_bytes), 0) FROM rounds"
        )[0]
        generations, old_referenced, old_file_bytes = self._query(
            "SELECT COUNT(*), COALESCE(SUM(flat_bytes), 0), COALESCE(SUM(file_size), 0)"
            " FROM round_history"
        )[0]
        chunks, stored, raw = self._query(
            "SELECT COUNT(*), COALESCE(SUM(stored_size), 0), COALESCE(SUM(raw_size), 0)"
            " FROM chunk_info"
        )[0]
        old_only = self._query(_GENERATIONS_ONLY_BYTES)[0][0] if generations else 0
        page_size = self._query("PRAGMA page_size")[0][0]
        free = self._query("PRAGMA freelist_count")[0][0] * page_size
        try:
            db_bytes = self.path.stat().st_size
        except OSError:
            db_bytes = 0
        return StoreStats(
            rounds,
            chunks,
            stored,
            raw,
            referenced + old_referenced,
            file_bytes + old_file_bytes,
            db_bytes,
            generations,
            free,
            old_file_bytes,
            old_only,
        )

    # -- files taken -----------------------------------------------------------------------------
    def find_source(self, path: str, identity: FileIdentity) -> SourceRecord | None:
        rows = self._query(
            "SELECT file_sha256, round_num, outcome FROM sources"
            " WHERE path = ? AND size = ? AND mtime_ns = ? AND ctime_ns = ?",
            (path, identity.size, identity.mtime_ns, identity.ctime_ns),
        )
        return SourceRecord(path, identity, *rows[0]) if rows else None

    def source_of(self, path: str) -> SourceRecord | None:
        """The last version of ``path`` that was taken, whatever its identity."""
        rows = self._query(
            "SELECT size, mtime_ns, ctime_ns, file_sha256, round_num, outcome FROM sources"
            " WHERE path = ?",
            (path,),
        )
        if not rows:
            return None
        size, mtime_ns, ctime_ns, sha, round_num, outcome = rows[0]
        return SourceRecord(path, FileIdentity(size, mtime_ns, ctime_ns), sha, round_num, outcome)

    def round_with_sha(self, file_sha256: str) -> int | None:
        rows = self._query(
            "SELECT round_num FROM rounds WHERE file_sha256 = ? ORDER BY round_num DESC LIMIT 1",
            (file_sha256,),
        )
        return rows[0][0] if rows else None
