"""The database's tables, the pragmas every connection sets, and the upgrade path between formats.

Format history (``PRAGMA user_version``):

* **1** (chunkd 0.1): the seed's ``chunk_metadata`` and ``chunk_data`` (with ``codec``, ``raw_size``
  and ``base_hash`` at the end), ``rounds`` (one row per round number) and ``sources``.
* **2**: adds ``chunk_info`` (a narrow copy of each chunk's codec, sizes and base, so listing and
  garbage collection never read blob pages), ``rounds.generation``/``rounds.run`` and the
  ``round_history`` tables (earlier generations of a rewritten round stay restorable).
* **3**: adds ``file_mtime_ns`` (when the ingested file was written) and ``ingest_seq`` (the order
  in which versions were committed) to ``rounds`` and ``round_history``: what assigns a restarted
  job's rounds to a new run (:mod:`chunkd.runs`) and what tells retention which round was just
  ingested. Versions stored by format 2 have neither (NULL): their ``created_at`` stands in.

:func:`migrate` upgrades in place inside one write transaction: a crash mid-upgrade leaves the
old format, which the next writer upgrades again. Readers never upgrade.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 3

#: The seed's tables exactly as docs/SPEC.md ("The database (one per client)") gives them, plus
#: chunkd's columns at the end.
_SEED_TABLES = """
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
)
"""

#: What format 2 adds to format 1.
_V2_ADDITIONS = """
ALTER TABLE rounds ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rounds ADD COLUMN run INTEGER NOT NULL DEFAULT 0;
CREATE TABLE chunk_info (
    chunk_hash TEXT PRIMARY KEY,
    codec TEXT NOT NULL,
    raw_size INTEGER NOT NULL,
    stored_size INTEGER NOT NULL,
    base_hash TEXT
) WITHOUT ROWID;
CREATE INDEX idx_chunk_info_base ON chunk_info(base_hash) WHERE base_hash IS NOT NULL;
CREATE TABLE round_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    round_num INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    run INTEGER NOT NULL,
    file_sha256 TEXT NOT NULL,
    file_size INTEGER NOT NULL,
    flat_bytes INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    new_chunks INTEGER NOT NULL,
    new_bytes INTEGER NOT NULL,
    layout TEXT NOT NULL,
    residue BLOB NOT NULL,
    source_path TEXT,
    created_at TIMESTAMP,
    superseded_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(round_num, generation)
);
CREATE TABLE round_history_chunks (
    history_id INTEGER NOT NULL,
    chunk_id INTEGER NOT NULL,
    chunk_hash TEXT NOT NULL,
    parts_info TEXT NOT NULL,
    flat_size INTEGER NOT NULL,
    PRIMARY KEY (history_id, chunk_id)
) WITHOUT ROWID;
CREATE INDEX idx_round_history_chunks_hash ON round_history_chunks(chunk_hash)
"""

#: What format 3 adds to format 2 (see :mod:`chunkd.runs`).
_V3_ADDITIONS = """
ALTER TABLE rounds ADD COLUMN file_mtime_ns INTEGER;
ALTER TABLE rounds ADD COLUMN ingest_seq INTEGER;
ALTER TABLE round_history ADD COLUMN file_mtime_ns INTEGER;
ALTER TABLE round_history ADD COLUMN ingest_seq INTEGER;
CREATE INDEX idx_rounds_run ON rounds(run, round_num);
CREATE INDEX idx_rounds_ingest_seq ON rounds(ingest_seq);
CREATE INDEX idx_round_history_run ON round_history(run, round_num);
CREATE INDEX idx_round_history_ingest_seq ON round_history(ingest_seq)
"""

#: Format 1's chunk figures, copied once into the narrow table (the one full scan an upgrade costs).
_V2_BACKFILL = (
    "INSERT OR IGNORE INTO chunk_info (chunk_hash, codec, raw_size, stored_size, base_hash)"
    " SELECT chunk_hash, codec, CASE WHEN raw_size >= 0 THEN raw_size ELSE length(data) END,"
    " length(data), base_hash FROM chunk_data"
)


def page_size_for(size_hint: int | None) -> int:
    """The page size for a new database, from the size of the first checkpoint it takes.

    Bigger pages write big blobs faster (fewer overflow pages per chunk; 4 KiB pages ingested a
    256 MiB checkpoint ~35% slower than 16-64 KiB here), smaller pages waste less: every table and
    index costs at least a page, and each stored chunk leaves half a page of slack on average
    (with 64 KiB pages, 3-15% of compressed 0.2-1 MiB chunks). 16 KiB keeps the slack near 1% at
    the speed of larger pages. A client's model rarely changes size.
    """
    if size_hint is None or size_hint >= 4 << 20:
        return 16384
    if size_hint >= 64 << 10:
        return 4096
    return 1024


def configure(conn: sqlite3.Connection, *, writer: bool, busy_timeout_ms: int) -> None:
    """Set every pragma that matters, on every connection; see docs/DESIGN.md "Pragmas".

    * ``trusted_schema=OFF``: a planted database cannot run SQL functions from its schema
      (views, triggers, defaults) in our connection.
    * ``cell_size_check=ON``: a damaged page is an error, never a wild read.
    * ``busy_timeout``: a reader waits for the writer's commit instead of failing at once.
    * ``mmap_size=0``: reads go through the page cache, so a truncated file is an error (SIGBUS
      is not) and memory stays bounded by ``cache_size``.
    """
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA trusted_schema=OFF")
    conn.execute("PRAGMA cell_size_check=ON")
    conn.execute("PRAGMA mmap_size=0")
    if not writer:
        conn.execute("PRAGMA query_only=1")


def configure_writer(conn: sqlite3.Connection, *, cache_kib: int) -> None:
    """The writer's pragmas (after the page size is fixed: changing it resets the cache size).

    * ``journal_mode=TRUNCATE`` and ``synchronous=FULL``: a rollback journal, fsynced, truncated
      rather than deleted at commit. WAL would write every byte twice (measured ~0.3 vs ~1 GB/s
      for 1 MiB blobs) and needs a writable ``-shm`` for every reader.
    * ``cache_spill=OFF``: the writer never writes dirty pages to the file before COMMIT, so it
      holds only RESERVED (readers go on) while it fills a batch, and EXCLUSIVE just for the
      commit. A batch is bounded (``BATCH_BYTES``), so the cache is too.
    * ``secure_delete=FAST``: freed pages are not zeroed on disk (SQLite's Debian build defaults
      to ON, which journals and rewrites every freed page: a prune wrote 6x what it freed). Old
      chunk bytes stay in free pages until reused; the file is the client's own data.
    """
    conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    conn.execute("PRAGMA cache_spill=OFF")
    conn.execute("PRAGMA journal_mode=TRUNCATE")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA secure_delete=FAST")


def create(conn: sqlite3.Connection, page_size: int) -> None:
    """Create a new database in the current format. Call with no table present yet: page size and
    ``auto_vacuum`` only take effect before the first table exists."""
    conn.execute(f"PRAGMA page_size={int(page_size)}")
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            _run_script(conn, _SEED_TABLES)
            _run_script(conn, _V2_ADDITIONS)
            _run_script(conn, _V3_ADDITIONS)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Upgrade a database of an older format in place, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current == 1:
            _run_script(conn, _V2_ADDITIONS)
            conn.execute(_V2_BACKFILL)
            current = 2
        if current == 2:
            _run_script(conn, _V3_ADDITIONS)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)
