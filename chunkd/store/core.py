"""ChunkStore: one client's SQLite database of deduplicated chunks and the rounds built from them.

The store package is the only code that imports :mod:`sqlite3`. It has no policy (what to keep,
when to ingest) and no threads; the engine modules call it. docs/DESIGN.md states the invariants;
in short:

* **Write order** (restic's "packs, then index, then snapshot"): chunk bytes first, in committed
  batches (a chunk no round references is invisible and harmless); then one transaction with the
  round's ``chunk_metadata`` rows, its ``rounds`` row and its ``sources`` row. A round is visible
  exactly when that commits. A rewritten round's earlier version moves to ``round_history`` in
  that same transaction, so no committed version is ever lost except by retention.
* **One writer per database**, enforced by an exclusive ``flock`` on ``<db>.lock``; no descriptor
  is ever opened or closed on the database inode outside SQLite (see :mod:`.lock`).
* **Readers are never starved for long**: the writer does not spill its cache, so it holds
  EXCLUSIVE only while committing one batch of at most ``BATCH_BYTES``.
* **Garbage collection** is one pure plan (:mod:`.gc`) that this class executes (with retention's
  deletes and free-space return, in :mod:`.removing`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from chunkd.errors import BusyError, NotFoundError, StoreError
from chunkd.store import schema
from chunkd.store.fairness import FairnessGate, gate_for
from chunkd.store.lock import WriterLock, file_id, refuse_symlink, writable_now
from chunkd.store.reading import StoreReading, wrap_error
from chunkd.store.records import SourceRecord
from chunkd.store.removing import StoreRemoving

#: Chunk bytes are committed in batches of about this size: the longest a reader waits for the
#: writer is one such commit (~20-60 ms here).
BATCH_BYTES = 8 << 20
#: How long a statement waits for another connection's lock before failing with "busy".
BUSY_TIMEOUT_MS = 30_000
#: Page cache per connection (KiB). The writer's dirty pages of one batch come on top (no spill).
CACHE_KIB = 8 << 10
#: Page size of a database no checkpoint has gone into yet (small: most tiny clients stay so).
INITIAL_PAGE_SIZE = 1024

if TYPE_CHECKING:
    from chunkd.store.writing import RoundWriter

Statement = tuple[str, tuple[object, ...]]


def source_upsert(source: SourceRecord) -> Statement:
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


class ChunkStore(StoreRemoving, StoreReading):
    """One open client database. Not thread-safe: each thread opens its own."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock: WriterLock | None) -> None:
        self.path = path
        self._conn = conn
        self._lock = lock
        self._file_id = file_id(path)
        self.gate: FairnessGate = gate_for(self._file_id)

    # -- opening and closing ---------------------------------------------------------------------
    @classmethod
    def open_writer(cls, path: str | os.PathLike[str]) -> ChunkStore:
        """Open (creating if needed) for writing; the caller is then the database's only writer.

        A database of an older format is upgraded in place; orphan chunks a crash left behind
        are removed.
        """
        db = Path(path)
        refuse_symlink(db)
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the directory of {db}: {e.strerror}") from None
        lock = WriterLock.acquire(db)
        conn = None
        try:
            refuse_symlink(db)  # again, under the lock
            conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            schema.configure(conn, writer=True, busy_timeout_ms=BUSY_TIMEOUT_MS)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            writable = writable_now(db) is None
            if version == 0:
                schema.create(conn, INITIAL_PAGE_SIZE)
            elif version < schema.SCHEMA_VERSION and writable:
                schema.migrate(conn, version)
            elif version != schema.SCHEMA_VERSION:
                raise StoreError(
                    f"database {db} has format {version}; this chunkd reads format "
                    f"{schema.SCHEMA_VERSION}"
                    + (" (it is read-only, so it cannot be upgraded)" if not writable else "")
                )
            schema.configure_writer(conn, cache_kib=CACHE_KIB)
            store = cls(db, conn, lock)
            if writable:  # a read-only database still opens, to serve restores
                store.collect_garbage()
            return store
        except sqlite3.Error as e:
            if conn is not None:
                conn.close()
            lock.release()
            raise wrap_error(e, db, "open") from None
        except BaseException:
            if conn is not None:
                conn.close()
            lock.release()
            raise

    @classmethod
    def open_reader(cls, path: str | os.PathLike[str]) -> ChunkStore:
        """Open an existing database for reading; never creates it, never writes a round.

        Opened read-write with ``query_only`` where the file permits: a writer killed mid-batch
        leaves a hot journal, and only a connection that may write can roll it back (SQLite
        does so on first read, restoring the last committed state). Without write permission
        it falls back to ``mode=ro``, which works whenever no hot journal is present. A database
        of the previous format is upgraded first when no writer holds it.
        """
        db = Path(path)
        refuse_symlink(db)
        if not db.is_file():
            raise NotFoundError(f"no database at {db}")
        for _upgrade in range(2):
            store, version = cls._connect_reader(db)
            if version == 0:
                store.close()
                raise NotFoundError(f"database {db} holds no rounds yet")
            if version == schema.SCHEMA_VERSION:
                return store
            store.close()
            if version > schema.SCHEMA_VERSION or writable_now(db) is not None:
                break
            # upgrade in place; a daemon that holds it (BusyError) upgraded it when it opened it
            with contextlib.suppress(BusyError):
                cls.open_writer(db).close()
        raise StoreError(
            f"database {db} has format {version}; this chunkd reads format {schema.SCHEMA_VERSION}"
        )

    @classmethod
    def _connect_reader(cls, db: Path) -> tuple[ChunkStore, int]:
        uri = db.resolve().as_uri()
        for mode in ("rw", "ro"):
            conn = None
            try:
                conn = sqlite3.connect(
                    f"{uri}?mode={mode}", uri=True, isolation_level=None, check_same_thread=False
                )
                schema.configure(conn, writer=False, busy_timeout_ms=BUSY_TIMEOUT_MS)
                conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                return cls(db, conn, None), int(version)
            except sqlite3.Error as e:
                if conn is not None:
                    conn.close()
                if mode == "ro":
                    raise StoreError(f"cannot open database {db}: {e}") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        try:
            self._conn.close()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def writable(self) -> bool:
        return self._lock is not None

    def release_memory(self) -> None:
        """Hand the page cache back between jobs: a daemon keeps one writer per client open for
        weeks, and an idle client should not hold a full cache."""
        try:
            self._conn.execute("PRAGMA shrink_memory")
        except sqlite3.Error as e:
            raise wrap_error(e, self.path, "shrink_memory") from None

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """Hold around a restore: this process's writer of the database defers its batch commits
        meanwhile (bounded, see :mod:`chunkd.store.fairness`)."""
        return self.gate.reading()

    def is_current(self) -> bool:
        """False once the database file was deleted or replaced under this open handle.

        A writer must then reopen: writing on would put rounds into an unlinked inode.
        """
        now = file_id(self.path)
        return now is not None and (self._file_id is None or now == self._file_id)

    # -- writing ---------------------------------------------------------------------------------
    def _require_writer(self) -> None:
        """Refuse to start a write unless the file can be written right now.

        A database made read-only under an open writer (``chattr +i``, a read-only remount)
        would otherwise fail at COMMIT and leave a hot journal behind, which every reader then
        tries, and fails, to roll back: one failed ingest would stop all restores.
        """
        if self._lock is None:
            raise StoreError(f"database {self.path} is open read-only")
        why = writable_now(self.path)
        if why is not None:
            raise StoreError(f"database {self.path} is not writable now: {why}")

    def _execute(self, sql: str, params: Iterable[object] = ()) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, tuple(params))
        except sqlite3.Error as e:
            raise wrap_error(e, self.path, "write") from None

    def begin_round(self, size_hint: int | None = None) -> RoundWriter:
        """Start writing one round; see :class:`~chunkd.store.writing.RoundWriter`.

        ``size_hint`` (the checkpoint's size) lets a database that holds nothing yet pick its
        page size (:func:`~chunkd.store.schema.page_size_for`).
        """
        from chunkd.store.writing import RoundWriter

        self._require_writer()
        if size_hint is not None:
            self._fit_page_size(size_hint)
        return RoundWriter(self)

    def _fit_page_size(self, size_hint: int) -> None:
        wanted = schema.page_size_for(size_hint)
        current = self._query("PRAGMA page_size")[0][0]
        if wanted == current or self._query("SELECT 1 FROM chunk_info LIMIT 1"):
            return
        if self._query("SELECT 1 FROM rounds LIMIT 1"):
            return
        try:  # an empty database: rebuilding it at the new page size costs a few pages
            self._conn.execute(f"PRAGMA page_size={wanted}")
            self._conn.execute("VACUUM")
            schema.configure_writer(self._conn, cache_kib=CACHE_KIB)
        except sqlite3.Error as e:
            raise wrap_error(e, self.path, "page size change") from None

    def record_source(self, source: SourceRecord) -> None:
        """Remember a file that was taken without a new round (a duplicate, a rejection)."""
        self._require_writer()
        self.transaction([source_upsert(source)])

    def transaction(self, statements: list[Statement]) -> None:
        c = self._conn
        try:
            c.execute("BEGIN IMMEDIATE")
            for sql, params in statements:
                c.execute(sql, params)
            c.execute("COMMIT")
        except sqlite3.Error as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise wrap_error(e, self.path, "transaction") from None

    def replace_chunk_encoding(
        self,
        chunk_hash: str,
        codec_name: str,
        stored: bytes | memoryview,
        base_hash: str | None = None,
    ) -> None:
        """Store a chunk's same raw bytes in another form: a delta re-coded as a key chunk
        (retention, forget), or a key chunk re-coded as a delta against ``base_hash`` (the link
        step after an ingest, chunkd.deltas). See :meth:`replace_chunk_encodings`."""
        self.replace_chunk_encodings([(chunk_hash, codec_name, stored, base_hash)])

    def replace_chunk_encodings(
        self, forms: Sequence[tuple[str, str, bytes | memoryview, str | None]]
    ) -> None:
        """Replace the stored form of each ``(hash, codec, stored bytes, base hash or None)``,
        all in one transaction (each commit is fsynced: the link step batches ~``BATCH_BYTES``).

        The hash, and so every reference, is unchanged; a reader's snapshot sees either form.
        """
        self._require_writer()
        statements: list[Statement] = []
        for chunk_hash, codec_name, stored, base_hash in forms:
            statements.append(
                (
                    "UPDATE chunk_data SET data = ?, codec = ?, base_hash = ? WHERE chunk_hash = ?",
                    (stored, codec_name, base_hash, chunk_hash),
                )
            )
            statements.append(
                (
                    "UPDATE chunk_info SET codec = ?, stored_size = ?, base_hash = ?"
                    " WHERE chunk_hash = ?",
                    (codec_name, len(stored), base_hash, chunk_hash),
                )
            )
        self.transaction(statements)
