"""ChunkStore: one client's SQLite database of deduplicated chunks and the rounds built from them.

The only module that imports :mod:`sqlite3`. It has no policy (what to keep, when to ingest) and
no threads; the engine modules call it.

Schema. The seed's ``chunk_metadata`` and ``chunk_data`` tables and indexes exactly as SPEC.md
gives them (``chunk_data`` gains ``codec`` and ``raw_size`` at the end), plus:

* ``rounds``: one row per visible round: its layout (JSON, see :mod:`chunkd.manifest`), its residue
  (zstd), the original file's size and SHA-256, and ingest figures;
* ``sources``: every file the daemon has taken (path, size, mtime, outcome), kept after retention
  removes the round, so a rescan never ingests the same file twice.

Write order, chosen for crash safety (restic's "packs, then index, then snapshot"):

1. chunk bytes (``chunk_data``), in batches of committed transactions. A chunk row that no round
   references is invisible and harmless; a crash here leaves only such orphans, which the next
   writer removes when it opens the database.
2. one final transaction with the round's ``chunk_metadata`` rows and its ``rounds`` row (and the
   removal of the round it replaces). A round is visible exactly when that commits.

Durability: ``journal_mode=TRUNCATE`` (a rollback journal, truncated rather than deleted at
commit: one metadata operation fewer), ``synchronous=FULL``, 64 KiB pages. Measured on this
machine, 1 MiB blobs go in at ~0.9-1.07 GB/s this way; WAL writes every byte twice
(~0.22-0.35 GB/s). WAL's
advantage, readers during a write, matters little here: the writer commits small batches, readers
use short transactions (one per chunk) and a busy timeout, so a restore waits at most one batch
commit. ``auto_vacuum=INCREMENTAL`` is set before any table exists so that retention can give
freed pages back to the filesystem (``PRAGMA incremental_vacuum``).

One writer per database: a writer holds an exclusive ``flock`` on the database file for as long as
it is open; a second writer (another daemon, an offline ``chunkd ingest``) gets
:class:`~chunkd.errors.BusyError`. Readers need no lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from chunkd import codec
from chunkd.errors import BusyError, IntegrityError, NotFoundError, StoreError
from chunkd.manifest import RoundLayout

SCHEMA_VERSION = 1
PAGE_SIZE = 65536
#: Chunk bytes are committed in batches of about this size (see the module docstring).
BATCH_BYTES = 32 << 20
#: How long a statement waits for another connection's lock before failing with "busy".
BUSY_TIMEOUT_MS = 30_000
#: Page cache per connection; bounded, so memory does not grow with the model (KiB, negative).
CACHE_KIB = 16 << 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunk_metadata (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    round_num INTEGER NOT NULL,
    chunk_id INTEGER NOT NULL,
    chunk_hash TEXT NOT NULL,
    parts_info TEXT NOT NULL,
    flat_size INTEGER NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(round_num, chunk_id)
);
CREATE TABLE IF NOT EXISTS chunk_data (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chunk_hash TEXT UNIQUE NOT NULL,
    data BLOB NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    codec TEXT NOT NULL DEFAULT 'raw',
    raw_size INTEGER NOT NULL DEFAULT -1,
    base_hash TEXT
);
CREATE INDEX IF NOT EXISTS idx_chunk_data_base ON chunk_data(base_hash)
    WHERE base_hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_chunk_metadata_round ON chunk_metadata(round_num);
CREATE INDEX IF NOT EXISTS idx_chunk_metadata_hash ON chunk_metadata(chunk_hash);
CREATE TABLE IF NOT EXISTS rounds (
    round_num INTEGER PRIMARY KEY,
    file_sha256 TEXT NOT NULL,
    file_size INTEGER NOT NULL,
    flat_bytes INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    new_chunks INTEGER NOT NULL,
    new_bytes INTEGER NOT NULL,
    layout TEXT NOT NULL,
    residue BLOB NOT NULL,
    source_path TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS sources (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    file_sha256 TEXT,
    round_num INTEGER,
    outcome TEXT NOT NULL,
    seen_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    ctime_ns INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True, slots=True)
class RoundInfo:
    """A visible round, as ``chunkd list`` shows it."""

    round_num: int
    file_sha256: str
    file_size: int
    flat_bytes: int
    chunk_count: int
    new_chunks: int
    new_bytes: int
    source_path: str | None
    created_at: str


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A round's chunk: its position, its hash and the seed's descriptor fields."""

    chunk_id: int
    chunk_hash: str
    parts_info: str
    flat_size: int


@dataclass(frozen=True, slots=True)
class StoredChunk:
    chunk_hash: str
    codec: str
    data: bytes
    raw_size: int
    #: the chunk a delta is XORed with (``codec.is_delta``); None for a self-contained chunk
    base_hash: str | None = None


@dataclass(frozen=True, slots=True)
class StoreStats:
    rounds: int
    chunks: int
    stored_bytes: int
    raw_bytes: int
    referenced_raw_bytes: int
    file_bytes: int
    db_file_bytes: int

    @property
    def dedup_ratio(self) -> float:
        """Logical (per-round) chunk bytes over the distinct chunk bytes kept."""
        return self.referenced_raw_bytes / self.raw_bytes if self.raw_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 1.0


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What tells one version of a file from another without reading it.

    ``ctime`` is in it because it cannot be set by a user: a copy that preserves size and mtime
    (``cp -p``, ``rsync -t``) still gets a new ctime, so it is read, never mistaken as seen.
    """

    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A file the daemon has taken, and what became of it (ingested, duplicate, rejected)."""

    path: str
    identity: FileIdentity
    file_sha256: str | None
    round_num: int | None
    outcome: str


def _source_upsert(source: SourceRecord) -> tuple[str, tuple[object, ...]]:
    return (
        "INSERT OR REPLACE INTO sources (path, size, mtime_ns, ctime_ns, file_sha256, round_num,"
        " outcome, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, CURRENT_TIMESTAMP)",
        (
            source.path,
            source.identity.size,
            source.identity.mtime_ns,
            source.identity.ctime_ns,
            source.file_sha256,
            source.round_num,
            source.outcome,
        ),
    )


def _wrap(e: sqlite3.Error, path: Path, what: str) -> StoreError:
    if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
        return BusyError(f"database {path} is busy ({what}): {e}")
    return StoreError(f"database {path}: {what} failed: {e}")


class ChunkStore:
    """One open client database. Not thread-safe: each thread opens its own."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock_fd: int | None) -> None:
        self.path = path
        self._conn = conn
        self._lock_fd = lock_fd

    # -- opening and closing ---------------------------------------------------------------------
    @classmethod
    def open_writer(cls, path: str | os.PathLike[str]) -> ChunkStore:
        """Open (creating if needed) for writing; the caller is then the database's only writer."""
        db = Path(path)
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open database {db}: {e}") from None
        lock_fd = None
        try:
            lock_fd = os.open(db, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise BusyError(
                        f"database {db} is held by another writer (a running chunkd daemon?)"
                    ) from None
                raise
            store = cls(db, conn, lock_fd)
            store._init_schema()
            if os.access(db, os.W_OK):  # a read-only database still opens, to serve restores
                store.remove_orphan_chunks()
            return store
        except BaseException:
            conn.close()
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    @classmethod
    def open_reader(cls, path: str | os.PathLike[str]) -> ChunkStore:
        """Open an existing database for reading; never creates it, never writes a round.

        Opened read-write with ``query_only`` where the file permits: a writer killed mid-batch
        leaves a hot journal, and only a connection that may write can roll it back (SQLite
        does so on first read, restoring the last committed state). Without write permission
        it falls back to ``mode=ro``, which works whenever no hot journal is present.
        """
        db = Path(path)
        if not db.is_file():
            raise NotFoundError(f"no database at {db}")
        uri = db.resolve().as_uri()
        conn = None
        version = 0
        for mode in ("rw", "ro"):
            try:
                conn = sqlite3.connect(
                    f"{uri}?mode={mode}", uri=True, isolation_level=None, check_same_thread=False
                )
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
                conn.execute("PRAGMA query_only=1")
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                break
            except sqlite3.Error as e:
                if conn is not None:
                    conn.close()
                    conn = None
                if mode == "ro":
                    raise StoreError(f"cannot open database {db}: {e}") from None
        assert conn is not None
        store = cls(db, conn, None)
        if version == 0:
            store.close()
            raise NotFoundError(f"database {db} holds no rounds yet")
        if version != SCHEMA_VERSION:
            store.close()
            raise StoreError(f"database {db} has schema version {version}, not {SCHEMA_VERSION}")
        return store

    def close(self) -> None:
        try:
            self._conn.close()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def writable(self) -> bool:
        return self._lock_fd is not None

    def release_memory(self) -> None:
        """Hand the page cache back between jobs: a daemon keeps one writer per client open for
        weeks, and an idle client should not hold a full cache."""
        try:
            self._conn.execute("PRAGMA shrink_memory")
        except sqlite3.Error as e:
            raise _wrap(e, self.path, "shrink_memory") from None

    def is_current(self) -> bool:
        """False once the database file was deleted or replaced under this open handle.

        A writer must then reopen: writing on would put rounds into an unlinked inode.
        """
        if self._lock_fd is None:
            return self.path.exists()
        try:
            now, held = self.path.stat(), os.fstat(self._lock_fd)
        except OSError:
            return False
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

    def _init_schema(self) -> None:
        c = self._conn
        try:
            c.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if c.execute("PRAGMA user_version").fetchone()[0] == 0:
                # Page size and auto_vacuum only take effect before the first table exists.
                c.execute(f"PRAGMA page_size={PAGE_SIZE}")
                c.execute("PRAGMA auto_vacuum=INCREMENTAL")
            # After page_size: changing the page size resets the cache to its default page
            # count, which at 64 KiB pages would be 256 MiB held for the connection's life.
            c.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            c.execute("PRAGMA journal_mode=TRUNCATE")
            c.execute("PRAGMA synchronous=FULL")
            c.execute("BEGIN IMMEDIATE")
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        c.execute(statement)
                c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise StoreError(
                    f"database {self.path} has schema version {version}, not {SCHEMA_VERSION}"
                )
            c.execute("COMMIT")
        except sqlite3.Error as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise _wrap(e, self.path, "schema setup") from None

    # -- reading ---------------------------------------------------------------------------------
    def _query(self, sql: str, params: Iterable[object] = ()) -> list[tuple]:
        try:
            return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as e:
            raise _wrap(e, self.path, "query") from None

    def list_rounds(self) -> list[RoundInfo]:
        rows = self._query(
            "SELECT round_num, file_sha256, file_size, flat_bytes, chunk_count, new_chunks,"
            " new_bytes, source_path, created_at FROM rounds ORDER BY round_num"
        )
        return [RoundInfo(*row) for row in rows]

    def round_numbers(self) -> list[int]:
        return [r[0] for r in self._query("SELECT round_num FROM rounds ORDER BY round_num")]

    def get_round(self, round_num: int) -> RoundInfo:
        rows = self._query(
            "SELECT round_num, file_sha256, file_size, flat_bytes, chunk_count, new_chunks,"
            " new_bytes, source_path, created_at FROM rounds WHERE round_num = ?",
            (round_num,),
        )
        if not rows:
            raise NotFoundError(f"round {round_num} is not stored in {self.path}")
        return RoundInfo(*rows[0])

    def latest_round(self) -> int:
        rows = self._query("SELECT MAX(round_num) FROM rounds")
        if rows[0][0] is None:
            raise NotFoundError(f"no round is stored in {self.path}")
        return int(rows[0][0])

    def highest_round(self) -> int | None:
        return self._query("SELECT MAX(round_num) FROM rounds")[0][0]

    def read_layout(self, round_num: int) -> tuple[RoundLayout, bytes]:
        """The round's layout and its residue bytes (decompressed)."""
        rows = self._query("SELECT layout, residue FROM rounds WHERE round_num = ?", (round_num,))
        if not rows:
            raise NotFoundError(f"round {round_num} is not stored in {self.path}")
        layout_json, residue = rows[0]
        try:
            layout = RoundLayout.from_json(layout_json)
            raw = zstandard.ZstdDecompressor().decompress(residue)
        except (ValueError, KeyError, TypeError, zstandard.ZstdError) as e:
            raise IntegrityError(f"round {round_num}: stored layout is damaged: {e}") from None
        return layout, raw

    def read_round(self, round_num: int) -> tuple[RoundLayout, bytes, list[ChunkRef]]:
        """Layout, residue and chunk list of a round, from one consistent snapshot.

        One read transaction: a replacement of the round committed between two separate reads
        would pair the old layout with the new chunks.
        """
        try:
            self._conn.execute("BEGIN")
            try:
                layout, residue = self.read_layout(round_num)
                chunks = self.round_chunks(round_num)
            finally:
                self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise _wrap(e, self.path, f"read of round {round_num}") from None
        return layout, residue, chunks

    def round_chunks(self, round_num: int) -> list[ChunkRef]:
        rows = self._query(
            "SELECT chunk_id, chunk_hash, parts_info, flat_size FROM chunk_metadata"
            " WHERE round_num = ? ORDER BY chunk_id",
            (round_num,),
        )
        return [ChunkRef(*row) for row in rows]

    def read_chunk(self, chunk_hash: str) -> StoredChunk:
        rows = self._query(
            "SELECT codec, data, raw_size, base_hash FROM chunk_data WHERE chunk_hash = ?",
            (chunk_hash,),
        )
        if not rows:
            raise IntegrityError(f"chunk {chunk_hash} is referenced but not stored")
        codec_name, data, raw_size, base_hash = rows[0]
        return StoredChunk(chunk_hash, codec_name, data, raw_size, base_hash)

    def read_raw_chunk(self, chunk_hash: str) -> bytes:
        """A chunk's raw bytes, decoded (and its base applied, for a delta); not hash-checked."""
        stored = self.read_chunk(chunk_hash)
        return self.decode_chunk(stored)

    def decode_chunk(self, stored: StoredChunk) -> bytes:
        base = None
        if stored.base_hash is not None:
            base_chunk = self.read_chunk(stored.base_hash)
            if base_chunk.base_hash is not None:
                raise IntegrityError(f"chunk {stored.chunk_hash}: its base is itself a delta")
            base = codec.decode(base_chunk.codec, base_chunk.data, base_chunk.raw_size)
        try:
            return codec.decode(stored.codec, stored.data, stored.raw_size, base)
        except IntegrityError as e:
            raise IntegrityError(f"chunk {stored.chunk_hash}: {e}") from None

    def chunk_base(self, chunk_hash: str) -> str | None:
        """For delta encoding: the self-contained chunk to XOR against for this flat range."""
        rows = self._query("SELECT base_hash FROM chunk_data WHERE chunk_hash = ?", (chunk_hash,))
        if not rows:
            return None
        return rows[0][0] or chunk_hash

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

    def stats(self) -> StoreStats:
        rounds, file_bytes = self._query(
            "SELECT COUNT(*), COALESCE(SUM(file_size), 0) FROM rounds"
        )[0]
        chunks, stored, raw = self._query(
            "SELECT COUNT(*), COALESCE(SUM(length(data)), 0),"
            " COALESCE(SUM(CASE WHEN raw_size >= 0 THEN raw_size ELSE length(data) END), 0)"
            " FROM chunk_data"
        )[0]
        referenced = self._query("SELECT COALESCE(SUM(flat_bytes), 0) FROM rounds")[0][0]
        try:
            db_bytes = self.path.stat().st_size
        except OSError:
            db_bytes = 0
        return StoreStats(rounds, chunks, stored, raw, referenced, file_bytes, db_bytes)

    def find_source(self, path: str, identity: FileIdentity) -> SourceRecord | None:
        rows = self._query(
            "SELECT file_sha256, round_num, outcome FROM sources"
            " WHERE path = ? AND size = ? AND mtime_ns = ? AND ctime_ns = ?",
            (path, identity.size, identity.mtime_ns, identity.ctime_ns),
        )
        return SourceRecord(path, identity, *rows[0]) if rows else None

    def round_with_sha(self, file_sha256: str) -> int | None:
        rows = self._query(
            "SELECT round_num FROM rounds WHERE file_sha256 = ? ORDER BY round_num DESC LIMIT 1",
            (file_sha256,),
        )
        return rows[0][0] if rows else None

    # -- writing ---------------------------------------------------------------------------------
    def _require_writer(self) -> None:
        """Refuse to start a write unless the file can be written right now.

        A database made read-only under an open writer (``chattr +i``, a read-only remount)
        would otherwise fail at COMMIT and leave a hot journal behind, which every reader then
        tries, and fails, to roll back: one failed ingest would stop all restores.
        """
        if self._lock_fd is None:
            raise StoreError(f"database {self.path} is open read-only")
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CLOEXEC))
        except OSError as e:
            raise StoreError(f"database {self.path} is not writable now: {e.strerror}") from None

    def _execute(self, sql: str, params: Iterable[object] = ()) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, tuple(params))
        except sqlite3.Error as e:
            raise _wrap(e, self.path, "write") from None

    def begin_round(self) -> RoundWriter:
        """Start writing one round; see :class:`RoundWriter`."""
        self._require_writer()
        return RoundWriter(self)

    def record_source(self, source: SourceRecord) -> None:
        """Remember a file that was taken without a new round (a duplicate, a rejection)."""
        self._require_writer()
        self._transaction([_source_upsert(source)])

    def _transaction(self, statements: list[tuple[str, tuple[object, ...]]]) -> None:
        c = self._conn
        try:
            c.execute("BEGIN IMMEDIATE")
            for sql, params in statements:
                c.execute(sql, params)
            c.execute("COMMIT")
        except sqlite3.Error as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise _wrap(e, self.path, "transaction") from None

    def delete_rounds(self, round_nums: Iterable[int]) -> int:
        """Remove rounds (their rows only; chunk bytes go with :meth:`remove_orphan_chunks`)."""
        self._require_writer()
        nums = list(round_nums)
        statements: list[tuple[str, tuple[object, ...]]] = []
        for n in nums:
            statements.append(("DELETE FROM rounds WHERE round_num = ?", (n,)))
            statements.append(("DELETE FROM chunk_metadata WHERE round_num = ?", (n,)))
        if statements:
            self._transaction(statements)
        return len(nums)

    #: Chunks that nothing needs: no round references them, and no delta that a round references
    #: uses them as its base. (Deltas are one link deep: a base is never a delta itself.)
    _DEAD_CHUNKS = (
        "FROM chunk_data WHERE NOT EXISTS"
        " (SELECT 1 FROM chunk_metadata m WHERE m.chunk_hash = chunk_data.chunk_hash)"
        " AND NOT EXISTS (SELECT 1 FROM chunk_data d JOIN chunk_metadata m"
        " ON m.chunk_hash = d.chunk_hash WHERE d.base_hash = chunk_data.chunk_hash)"
    )

    def remove_orphan_chunks(self) -> tuple[int, int]:
        """Delete chunk bytes nothing needs (see ``_DEAD_CHUNKS``); returns ``(chunks, bytes)``.

        A delta is never left without its base: a base stays while a referenced delta uses it.
        """
        self._require_writer()
        c = self._conn
        try:
            c.execute("BEGIN IMMEDIATE")
            count, nbytes = c.execute(
                f"SELECT COUNT(*), COALESCE(SUM(length(data)), 0) {self._DEAD_CHUNKS}"
            ).fetchone()
            if count:
                c.execute(f"DELETE {self._DEAD_CHUNKS}")
            c.execute("COMMIT")
        except sqlite3.Error as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise _wrap(e, self.path, "orphan removal") from None
        return int(count), int(nbytes)

    def orphan_chunk_count(self) -> int:
        return self._query(f"SELECT COUNT(*) {self._DEAD_CHUNKS}")[0][0]

    def vacuum_free_pages(self) -> int:
        """Give free pages back to the filesystem; returns the bytes the file shrank by.

        ``executescript`` because the pragma frees one page per step and ``execute`` steps a
        statement that returns no rows only once.
        """
        self._require_writer()
        before = self.path.stat().st_size
        try:
            self._conn.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.Error as e:
            raise _wrap(e, self.path, "incremental vacuum") from None
        return before - self.path.stat().st_size


class RoundWriter:
    """Writes one round in the store's crash-safe order.

    ``add_chunk`` for every chunk (bytes committed in batches), then ``commit`` (one transaction
    that makes the round visible), or ``abort`` (removes the chunk rows this writer added, so a
    rejected file leaves the database as it was).
    """

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
        self._added.append(chunk_hash)
        self.new_chunks += 1
        self.new_bytes += len(stored)
        self.new_raw_bytes += raw_size
        self._batch_bytes += len(stored)
        if self._batch_bytes >= BATCH_BYTES:
            self._store._execute("COMMIT")
            self._batch_bytes = 0
        return True

    def commit(
        self,
        *,
        round_num: int,
        layout: RoundLayout,
        residue: bytes,
        chunks: list[tuple[int, str, str, int]],
        source: SourceRecord | None,
    ) -> bool:
        """Make the round visible; ``chunks`` = ``[(chunk_id, hash, parts_info, flat_size)]``.

        The file's ``sources`` row commits in the same transaction: a crash can never leave a
        round whose file would be taken again (and, once pruned, come back). Returns True when an
        existing round with that number was replaced.
        """
        c = self._conn
        packed_residue = zstandard.ZstdCompressor(level=3).compress(residue)
        try:
            self._ensure_txn()
            replaced = (
                c.execute("SELECT 1 FROM rounds WHERE round_num = ?", (round_num,)).fetchone()
                is not None
            )
            if replaced:
                c.execute("DELETE FROM chunk_metadata WHERE round_num = ?", (round_num,))
                c.execute("DELETE FROM rounds WHERE round_num = ?", (round_num,))
            c.executemany(
                "INSERT INTO chunk_metadata (round_num, chunk_id, chunk_hash, parts_info,"
                " flat_size) VALUES (?, ?, ?, ?, ?)",
                [(round_num, cid, h, parts, size) for cid, h, parts, size in chunks],
            )
            c.execute(
                "INSERT INTO rounds (round_num, file_sha256, file_size, flat_bytes, chunk_count,"
                " new_chunks, new_bytes, layout, residue, source_path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                ),
            )
            if source is not None:
                c.execute(*_source_upsert(source))
            c.execute("COMMIT")
        except sqlite3.Error as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            self.abort()
            raise _wrap(e, self._store.path, f"commit of round {round_num}") from None
        self._added.clear()
        return replaced

    def abort(self) -> None:
        """Undo this writer's chunk rows (best effort: leftovers are orphans, removed later)."""
        c = self._conn
        try:
            if c.in_transaction:
                c.execute("ROLLBACK")
            added, self._added = self._added, []
            if not added:
                return
            c.execute("BEGIN IMMEDIATE")
            for i in range(0, len(added), 500):
                batch = added[i : i + 500]
                marks = ",".join("?" * len(batch))
                c.execute(
                    f"DELETE FROM chunk_data WHERE chunk_hash IN ({marks}) AND NOT EXISTS"  # noqa: S608
                    " (SELECT 1 FROM chunk_metadata m WHERE m.chunk_hash = chunk_data.chunk_hash)",
                    batch,
                )
            c.execute("COMMIT")
            c.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.Error:
            if c.in_transaction:
                c.execute("ROLLBACK")
