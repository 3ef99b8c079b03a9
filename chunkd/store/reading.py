"""Everything a store answers without writing: rounds, their versions, chunks and figures.

Mixed into :class:`~chunkd.store.core.ChunkStore`; a reader and the writer share these queries.
Listing and figures read only narrow tables (``rounds`` without its blobs, ``chunk_info``), so
``chunkd list`` costs O(rounds + chunks), never O(bytes).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

import zstandard

from chunkd.errors import BusyError, IntegrityError, NotFoundError, StoreError
from chunkd.manifest import RoundLayout
from chunkd.store.chains import Chain, KnownChunks
from chunkd.store.records import (
    ChunkRef,
    FileIdentity,
    RoundInfo,
    SourceRecord,
    StoredChunk,
    StoreStats,
)

#: A delta chain longer than this is damage (ingest starts a key chunk well before).
MAX_CHAIN = 64

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


class StoreReading:
    """Read queries over ``self._conn`` (set by the concrete store)."""

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

    # -- chunks ----------------------------------------------------------------------------------
    def read_chunk(self, chunk_hash: str) -> StoredChunk:
        """The chunk's stored form (one statement; see :meth:`read_chain` for a whole chain)."""
        rows = self._chunk_rows(chunk_hash)
        if not rows:
            raise IntegrityError(f"chunk {chunk_hash} is referenced but not stored")
        return StoredChunk(chunk_hash, *rows[0])

    def read_raw_chunk(self, chunk_hash: str, known: KnownChunks | None = None) -> bytes:
        """A chunk's raw bytes, decoded (its delta chain applied); not hash-checked. The chain is
        read in one read transaction (:meth:`read_chain`). ``known``: raw bytes already at hand,
        by hash, where a chain may stop early."""
        chain = self.read_chain(chunk_hash, known)
        if chain is None:
            raise IntegrityError(f"chunk {chunk_hash} is referenced but not stored")
        return chain.decode()

    def read_chain(self, chunk_hash: str, known: KnownChunks | None = None) -> Chain | None:
        """The chunk's stored form and every link down to its key chunk (or to a chunk in
        ``known``), all from one read transaction; None if the chunk is not stored.

        One snapshot is what makes a chain consistent: retention re-codes a kept delta as a key
        chunk and garbage collection then removes its base (docs/DESIGN.md "Readers see one
        consistent chain"), so links read in separate transactions can name a base that is gone
        by the time it is read. Within one snapshot every link's base is stored, or the store is
        damaged. The transaction holds at most ``KEY_INTERVAL`` chunk rows' reads; decoding
        happens after it ends.
        """
        with self.snapshot():
            rows = self._chunk_rows(chunk_hash)
            if not rows:
                return None
            return self._links(StoredChunk(chunk_hash, *rows[0]), known)

    def decode_chunk(self, stored: StoredChunk, known: KnownChunks | None = None) -> bytes:
        """Decode ``stored``, applying its delta chain from the nearest key chunk (or from a
        chunk already decoded in ``known``, hash -> raw bytes). Memory: the chain's stored forms
        and two decoded chunks.

        ``stored`` may have been read many statements ago (``verify`` reads chunks in batches):
        since then retention may have re-coded it or a link of its chain as a key chunk and
        removed the bases nothing needs any more. Its links are read in one snapshot; if that
        fails, the chunk is read again from the top, chain and all, in one snapshot, and what
        fails then is damage (or a chunk no longer stored).
        """
        try:
            with self.snapshot():
                chain = self._links(stored, known)
            return chain.decode()
        except IntegrityError:
            if stored.base_hash is None:
                raise  # a key chunk decodes alone, whenever it was read: its bytes are bad
        return self.read_raw_chunk(stored.chunk_hash, known)

    def _chunk_rows(self, chunk_hash: str) -> list[tuple]:
        return self._query(
            "SELECT codec, data, raw_size, base_hash FROM chunk_data WHERE chunk_hash = ?",
            (chunk_hash,),
        )

    def _links(self, top: StoredChunk, known: KnownChunks | None) -> Chain:
        """``top``'s chain; the caller holds the read transaction the links come from."""
        links = [top]
        while (base_hash := links[-1].base_hash) is not None:
            base = known.get(base_hash) if known is not None else None  # one atomic look-up
            if base is not None:
                return Chain(tuple(links), base)
            if len(links) > MAX_CHAIN:
                raise IntegrityError(f"chunk {top.chunk_hash}: delta chain is too long")
            links.append(self.read_chunk(base_hash))
        return Chain(tuple(links), None)

    def chunk_base(self, chunk_hash: str) -> str | None:
        """The key chunk at the start of ``chunk_hash``'s chain (itself for a key chunk)."""
        rows = self._query("SELECT base_hash FROM chunk_info WHERE chunk_hash = ?", (chunk_hash,))
        if not rows:
            return None
        return rows[0][0] or chunk_hash

    def chunk_depth(self, chunk_hash: str) -> int | None:
        """Delta links from ``chunk_hash`` to its key chunk (0 = a key); None if not stored."""
        depth = 0
        current: str | None = chunk_hash
        while True:
            rows = self._query("SELECT base_hash FROM chunk_info WHERE chunk_hash = ?", (current,))
            if not rows:
                return None if depth == 0 else depth
            current = rows[0][0]
            if current is None:
                return depth
            depth += 1
            if depth > MAX_CHAIN:
                return depth

    def iter_chunks(self) -> Iterator[StoredChunk]:
        """Every stored chunk, one at a time (bounded memory), in rowid order."""
        last = 0
        while True:
            rows = self._query(
                "SELECT id, chunk_hash, codec, data, raw_size, base_hash FROM chunk_data"
                " WHERE id > ? ORDER BY id LIMIT 16",
                (last,),
            )
            if not rows:
                return
            for row_id, chunk_hash, codec_name, data, raw_size, base_hash in rows:
                last = row_id
                yield StoredChunk(chunk_hash, codec_name, data, raw_size, base_hash)

    def has_chunk(self, chunk_hash: str) -> bool:
        return bool(self._query("SELECT 1 FROM chunk_data WHERE chunk_hash = ?", (chunk_hash,)))

    def chunk_graph(self) -> tuple[set[str], dict[str, str | None], dict[str, int]]:
        """What garbage collection decides on: referenced hashes, each chunk's base, its size."""
        referenced = {
            r[0]
            for r in self._query(
                "SELECT chunk_hash FROM chunk_metadata UNION SELECT chunk_hash FROM"
                " round_history_chunks"
            )
        }
        bases: dict[str, str | None] = {}
        sizes: dict[str, int] = {}
        for chunk_hash, base_hash, stored_size in self._query(
            "SELECT chunk_hash, base_hash, stored_size FROM chunk_info"
        ):
            bases[chunk_hash] = base_hash
            sizes[chunk_hash] = stored_size
        return referenced, bases, sizes

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

    def chunk_forms(self, hashes: Collection[str]) -> dict[str, tuple[str | None, int]]:
        """``hash -> (base hash or None, stored size)`` for those of ``hashes`` that are stored."""
        forms: dict[str, tuple[str | None, int]] = {}
        for batch in _batches(list(hashes)):
            marks = ",".join("?" * len(batch))
            for chunk_hash, base_hash, stored_size in self._query(
                "SELECT chunk_hash, base_hash, stored_size FROM chunk_info"  # noqa: S608
                f" WHERE chunk_hash IN ({marks})",
                tuple(batch),
            ):
                forms[chunk_hash] = (base_hash, stored_size)
        return forms

    def deltas_on(self, bases: Collection[str]) -> list[tuple[str, str]]:
        """``(chunk, base)`` for every stored delta coded against one of ``bases`` (indexed)."""
        found: list[tuple[str, str]] = []
        for batch in _batches(list(bases)):
            marks = ",".join("?" * len(batch))
            found.extend(
                self._query(
                    "SELECT chunk_hash, base_hash FROM chunk_info"  # noqa: S608
                    f" WHERE base_hash IN ({marks})",
                    tuple(batch),
                )
            )
        return found

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


def _batches(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """``items`` in slices small enough for one statement's parameters."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
