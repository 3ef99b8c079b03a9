"""The ``list`` summary cache (chunkd/daemon/summaries.py): its stamp sees every change a writer
can make to a real database, it never serves a summary older than the file, and it is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from chunkd.daemon.summaries import SummaryCache, stamp_of
from chunkd.forget import forget_version
from chunkd.ingest import IngestOptions, ingest_file
from chunkd.prune import prune_store
from chunkd.store import ChunkStore
from chunkd.summary import summarize_database
from tests.daemon.checkpoints import save_model


def _ingest(db: Path, directory: Path, round_num: int, seed: int) -> None:
    path = directory / f"model_round_{round_num}.pth"
    save_model(path, seed, elements=256)
    with ChunkStore.open_writer(db) as store:
        ingest_file(path, store, IngestOptions())


def _read(db: Path) -> dict[str, object]:
    with ChunkStore.open_reader(db) as store:
        return summarize_database("c", store)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "client_c_chunks.db"
    _ingest(path, tmp_path, 1, 1)
    return path


def test_every_write_changes_the_stamp(db: Path, tmp_path: Path) -> None:
    """Ingest, prune, forget and a replaced file each give a new stamp; nothing else does."""
    first = stamp_of(db)
    assert first is not None and stamp_of(db) == first  # reading changes nothing
    _read(db)
    assert stamp_of(db) == first

    _ingest(db, tmp_path, 2, 2)
    after_ingest = stamp_of(db)
    assert after_ingest not in (None, first)

    with ChunkStore.open_writer(db) as store:
        prune_store(store, 1)
    after_prune = stamp_of(db)
    assert after_prune not in (None, after_ingest)

    with ChunkStore.open_writer(db) as store:
        forget_version(store, 2)
    after_forget = stamp_of(db)
    assert after_forget not in (None, after_prune)

    other = tmp_path / "other.db"
    shutil.copyfile(db, other)
    os.replace(other, db)  # same bytes, new file
    assert stamp_of(db) not in (None, after_forget)


def test_the_change_counter_moves_with_every_commit(db: Path, tmp_path: Path) -> None:
    """Two commits within one tick of the filesystem's coarse clock that keep the size would
    share mtime and ctime; SQLite's change counter still differs (ctime cannot be put back to
    show it through the stamp, so the counter is checked directly)."""
    before = stamp_of(db)
    _ingest(db, tmp_path, 2, 2)
    after = stamp_of(db)
    assert before is not None and after is not None
    assert before.change_counter != after.change_counter


def test_no_stamp_while_a_transaction_or_a_wal_is_there(db: Path) -> None:
    journal = Path(f"{db}-journal")
    journal.write_bytes(b"\0" * 512)  # a transaction in flight, or a hot journal
    assert stamp_of(db) is None
    journal.write_bytes(b"")  # journal_mode=TRUNCATE leaves it empty between transactions
    assert stamp_of(db) is not None
    Path(f"{db}-wal").write_bytes(b"")
    assert stamp_of(db) is None
    Path(f"{db}-wal").unlink()
    db.unlink()
    assert stamp_of(db) is None


def test_the_cache_reads_again_after_each_change_and_never_before(db: Path, tmp_path: Path) -> None:
    cache = SummaryCache()
    reads: list[int] = []

    def read() -> dict[str, object]:
        reads.append(1)
        return _read(db)

    assert cache.get("c", db, read) == _read(db)
    assert cache.get("c", db, read) == _read(db)
    assert len(reads) == 1  # unchanged: served without opening the database
    _ingest(db, tmp_path, 2, 2)
    assert [r["round"] for r in cache.get("c", db, read)["rounds"]] == [1, 2]  # type: ignore[index]
    assert len(reads) == 2
    with ChunkStore.open_writer(db) as store:
        forget_version(store, 1)
    assert cache.get("c", db, read) == _read(db)
    assert len(reads) == 3
    served = cache.get("c", db, read)
    served["rounds"] = []  # the caller's own copy
    assert cache.get("c", db, read) == _read(db)
    assert cache.counts()["read"] == 3 and cache.counts()["reused"] == 3


def test_entries_of_clients_no_longer_watched_go(db: Path) -> None:
    cache = SummaryCache()
    for cid in ("a", "b", "c"):
        cache.get(cid, db, lambda: _read(db))
    assert cache.counts()["cached"] == 3
    cache.retain({"b"})
    assert cache.counts()["cached"] == 1


def test_a_failed_read_is_not_cached(db: Path) -> None:
    cache = SummaryCache()
    cache.get("c", db, lambda: _read(db))

    def broken() -> dict[str, object]:
        raise OSError("disk on fire")

    os.utime(db, ns=(1, 1))  # a new stamp (mtime, ctime)
    with pytest.raises(OSError):
        cache.get("c", db, broken)
    assert cache.counts()["cached"] == 0


def test_a_database_whose_schema_never_committed_is_empty_not_damaged(make_daemon) -> None:
    """A writer killed while creating a new database leaves a file with no schema (version 0):
    nothing was stored and nothing is damaged (found by the lifecycle campaign, seed 67)."""
    import sqlite3 as sqlite

    daemon = make_daemon(start=False)
    db = daemon.db("1")
    db.parent.mkdir(parents=True)
    with sqlite.connect(db) as conn:  # a non-empty file whose user_version is still 0
        conn.execute("CREATE TABLE half_made (x INTEGER)")
    daemon.start()
    listed = json.loads(daemon.cli("list", "--json").stdout)["clients"]
    (entry,) = [c for c in listed if c["client"] == "1"]
    assert entry["round_count"] == 0 and "error" not in entry and "damaged" not in entry
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert status["damaged_databases"] == {}
