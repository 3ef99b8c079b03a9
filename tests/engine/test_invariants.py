"""The store's invariants (docs/DESIGN.md), one test each, named after the invariant.

Each of issue 13's findings has its regression test here; every one fails on chunkd 0.1.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from chunkd.errors import BusyError, NotFoundError, RoundConflictError, StoreError
from chunkd.ingest import IngestOptions, ingest_file
from chunkd.prune import prune_store
from chunkd.restore import restore_round
from chunkd.store import SCHEMA_VERSION, ChunkStore
from chunkd.verify import verify_store
from tests.strategies import random_tensor, save_checkpoint

DATA = Path(__file__).parent / "data"
#: SHA-256 of the files chunkd 0.1 ingested into data/store_v1.db (round 4 is the rewrite).
V1_ROUNDS = {
    1: "9f0f95d4fc0e3c0605660cb37762c0c1e2e1b1511ca9217b11ad7349413d1e84",
    2: "6288b750f5f10194f118450ae18bbf5fda18d136cd7faea67afdce1f89d4ea5e",
    3: "f6166b6cc4cf1886a11827cf89dce2b6a9da4d540fe46cebeb69b7eed7c49006",
    4: "65f85ff9976d548d4d2ba3d9e8664dc0d7947d675965d15f4cc6fbf0fb215866",
}


def restore_bytes(store: ChunkStore, round_num: int, generation: int | None = None) -> bytes:
    buf = io.BytesIO()
    restore_round(store, round_num, buf.write, generation=generation)
    return buf.getvalue()


def save(obj: object, path: Path) -> Path:
    save_checkpoint(obj, path)
    return path


def state(seed: int, n: int = 4096) -> dict[str, torch.Tensor]:
    return {
        "w": random_tensor(torch.float32, (n,), seed),
        "b": random_tensor(torch.float32, (8,), seed + 1),
    }


def io_counter(field: str) -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        if key == field:
            return int(value)
    raise KeyError(field)


# -- the lock model: no descriptor on the database inode ------------------------------------------

OTHER_WRITER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        print("acquired")
    except sqlite3.OperationalError as e:
        print("refused:", e)
    """
)


def other_process_can_begin_write(db: Path) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", OTHER_WRITER, str(db)], capture_output=True, text=True, check=True
    ).stdout
    return out.startswith("acquired")


def test_no_fd_on_the_database_inode(db_path):
    """A refused second writer (same process) must not drop the first writer's SQLite locks:
    closing any fd on the inode would (SQLite "How to corrupt" 2.2). chunkd 0.1 failed this."""
    store = ChunkStore.open_writer(db_path)
    try:
        writer = store.begin_round()
        writer.add_chunk("a" * 64, "raw", b"x" * 100, 100)  # holds RESERVED from here on
        assert not other_process_can_begin_write(db_path)
        with pytest.raises(BusyError):
            ChunkStore.open_writer(db_path)
        store.begin_round()  # the writability check must not touch the inode either
        assert not other_process_can_begin_write(db_path)  # the locks are still there
        writer.abort()
    finally:
        store.close()
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue  # the listing's own descriptor
    assert str(db_path) not in fds


def test_one_writer_per_database_through_any_path(tmp_path, db_path):
    """Two client ids that resolve to one database (a symlinked directory) get one writer."""
    ChunkStore.open_writer(db_path).close()
    alias = tmp_path / "alias"
    alias.symlink_to(tmp_path, target_is_directory=True)
    with ChunkStore.open_writer(db_path), pytest.raises(BusyError):
        ChunkStore.open_writer(alias / db_path.name)
    assert Path(f"{db_path}.lock").exists()


def test_a_symlinked_database_is_refused(tmp_path):
    target = tmp_path / "elsewhere.db"
    ChunkStore.open_writer(target).close()
    link = tmp_path / "client_1_chunks.db"
    link.symlink_to(target)
    with pytest.raises(StoreError, match="symbolic link"):
        ChunkStore.open_writer(link)
    with pytest.raises(StoreError, match="symbolic link"):
        ChunkStore.open_reader(link)


def test_every_connection_distrusts_the_schema(db_path, tmp_path):
    ChunkStore.open_writer(db_path).close()
    for store in (ChunkStore.open_writer(db_path),):
        with store:
            conn = store._conn
            assert conn.execute("PRAGMA trusted_schema").fetchone() == (0,)
            assert conn.execute("PRAGMA cell_size_check").fetchone() == (1,)
            assert conn.execute("PRAGMA secure_delete").fetchone() == (2,)  # FAST


# -- readers are not starved -----------------------------------------------------------------------


def test_writer_holds_no_exclusive_lock_between_commits(db_path):
    """Mid-batch, with more dirty pages than its cache, the writer still lets readers in: it never
    spills (chunkd 0.1 spilled, took EXCLUSIVE, and a restore waited seconds)."""
    with ChunkStore.open_writer(db_path) as store:
        store.begin_round(size_hint=1 << 30)  # the page size of a large model
        store._conn.execute("PRAGMA cache_size=-1024")  # 1 MiB: the batch below is 6x that
        writer = store.begin_round()
        for i in range(6):
            data = os.urandom(1 << 20)
            writer.add_chunk(f"{i:064x}", "raw", data, len(data))
        reader = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, timeout=0)
        assert reader.execute("SELECT COUNT(*) FROM chunk_data").fetchone() == (0,)
        reader.close()
        writer.abort()


# -- retention without write amplification -------------------------------------------------------


def test_prune_writes_little_more_than_it_frees(tmp_path, db_path):
    """Steady state, keep 3: a prune writes at most 1.2x the bytes it frees (0.1: ~6x, from
    secure_delete and a vacuum after every prune), and the file stays within ~4 rounds."""
    options = IngestOptions(max_chunk_bytes=256 << 10)
    round_bytes = 4 << 20
    with ChunkStore.open_writer(db_path) as store:
        for r in range(1, 9):
            path = save(state(r, round_bytes // 4), tmp_path / f"m_{r}.pth")
            ingest_file(path, store, options, round_num=r)
            before = io_counter("write_bytes")
            result = prune_store(store, 3)
            written = io_counter("write_bytes") - before
            if result.bytes_removed:
                assert written <= 1.2 * result.bytes_removed
                assert db_path.stat().st_size <= 4.2 * round_bytes
        assert store.round_numbers() == [6, 7, 8]


def test_listing_reads_no_blob_pages(tmp_path, db_path):
    """``stats`` and ``list_rounds`` read narrow tables only: under 1% of a churned file."""
    with ChunkStore.open_writer(db_path) as store:
        for r in range(1, 7):
            path = save(state(r, 1 << 20), tmp_path / f"m_{r}.pth")
            ingest_file(path, store, IngestOptions(), round_num=r)
            prune_store(store, 3)
    with ChunkStore.open_reader(db_path) as reader:
        before = io_counter("rchar")
        stats = reader.stats()
        reader.list_rounds()
        read = io_counter("rchar") - before
    assert stats.rounds == 3
    assert read < 0.01 * db_path.stat().st_size


def test_a_format_1_database_is_upgraded_in_place(tmp_path):
    """A database made by chunkd 0.1 opens, is upgraded, and restores every round."""
    db = tmp_path / "client_1_chunks.db"
    shutil.copy(DATA / "store_v1.db", db)
    with ChunkStore.open_reader(db) as reader:  # no daemon holds it: the reader upgrades it
        assert reader._conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        for r, sha in V1_ROUNDS.items():
            data = restore_bytes(reader, r)
            assert __import__("hashlib").sha256(data).hexdigest() == sha
        stats = reader.stats()
        assert stats.rounds == 4 and stats.chunks > 0 and stats.stored_bytes > 0
        assert verify_store(reader).ok
    with ChunkStore.open_writer(db) as store:  # and it goes on taking rounds
        path = save(state(5), tmp_path / "model_round_5.pth")
        assert ingest_file(path, store, IngestOptions()).round_num == 5


# -- GC and leases; files taken stay taken -------------------------------------------------------


def test_gc_runs_while_a_round_is_leased(tmp_path, db_path):
    with ChunkStore.open_writer(db_path) as store:
        for r in range(1, 6):
            ingest_file(save(state(r), tmp_path / f"m_{r}.pth"), store, IngestOptions())
        result = prune_store(store, 1, leased={2})
        assert result.plan.held == (2,)
        assert result.chunks_removed > 0  # 0.1 switched GC off while any lease existed
        assert store.round_numbers() == [2, 5]
        assert verify_store(store).ok


def test_a_metadata_change_does_not_bring_back_a_pruned_round(tmp_path, db_path):
    paths = [save(state(r), tmp_path / f"model_round_{r}.pth") for r in range(1, 6)]
    with ChunkStore.open_writer(db_path) as store:
        for p in paths:
            ingest_file(p, store, IngestOptions())
        prune_store(store, 2)
        for p in paths:
            os.chmod(p, 0o600)  # a new ctime; size, mtime and bytes unchanged
        outcomes = {ingest_file(p, store, IngestOptions()).outcome for p in paths}
        assert outcomes == {"seen"}
        assert store.round_numbers() == [4, 5]


# -- generations: no stored round is lost except by retention -------------------------------------


def test_a_rewrite_keeps_the_earlier_generation(tmp_path, db_path):
    path = tmp_path / "model_round_3.pth"
    first = save_checkpoint(state(1), path)
    with ChunkStore.open_writer(db_path) as store:
        ingest_file(path, store, IngestOptions())
        second = save_checkpoint(state(2), path)  # a rerun writes the same name
        result = ingest_file(path, store, IngestOptions())
        assert (result.outcome, result.generation) == ("replaced", 1)
        assert result.previous_sha256 == __import__("hashlib").sha256(first).hexdigest()
        assert restore_bytes(store, 3) == second
        assert restore_bytes(store, 3, generation=0) == first
        assert [(v.round_num, v.generation, v.current) for v in store.list_versions()] == [
            (3, 0, False),
            (3, 1, True),
        ]
        assert verify_store(store).ok


def test_a_different_file_never_takes_a_stored_round(tmp_path, db_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    mine = save_checkpoint(state(1), a / "model_round_3.pth")
    save_checkpoint(state(2), b / "model_round_3.pth")
    shutil.copy(a / "model_round_3.pth", b / "copy_round_3.pth")
    with ChunkStore.open_writer(db_path) as store:
        ingest_file(a / "model_round_3.pth", store, IngestOptions())
        with pytest.raises(RoundConflictError, match="already stored from"):
            ingest_file(b / "model_round_3.pth", store, IngestOptions())
        assert ingest_file(b / "copy_round_3.pth", store, IngestOptions()).outcome == "duplicate"
        assert restore_bytes(store, 3) == mine
        assert store.list_versions()[-1].generation == 0
        # an operator may still store it, under a number of their choosing or this one
        forced = ingest_file(b / "model_round_3.pth", store, IngestOptions(), round_num=30)
        assert forced.round_num == 30


def test_a_rerun_is_newer_than_the_previous_run(tmp_path, db_path):
    """Latest and retention follow (run, round): a rerun's round 1 outranks the old round 6."""
    with ChunkStore.open_writer(db_path) as store:
        for r in range(1, 7):
            save_checkpoint(state(r), tmp_path / f"model_round_{r}.pth")
            ingest_file(tmp_path / f"model_round_{r}.pth", store, IngestOptions())
        rerun = save_checkpoint(state(100), tmp_path / "model_round_1.pth")
        ingest_file(tmp_path / "model_round_1.pth", store, IngestOptions())
        assert store.latest_round() == 1
        result = prune_store(store, 5)
        assert 1 in result.plan.keep and result.plan.remove == (2,)
        assert restore_bytes(store, 1) == rerun
        with pytest.raises(NotFoundError, match="stored rounds: 1, 3, 4, 5, 6"):
            store.get_round(2)


def test_repeated_rewrites_are_bounded_by_retention(tmp_path, db_path):
    path = tmp_path / "model_round_1.pth"
    with ChunkStore.open_writer(db_path) as store:
        for i in range(8):
            save_checkpoint(state(i), path)
            ingest_file(path, store, IngestOptions())
        prune_store(store, 3)
        versions = store.list_versions()
        assert len(versions) == 4  # the current version and 3 earlier generations
        assert json.dumps([v.generation for v in versions]) == "[4, 5, 6, 7]"


def test_a_restore_defers_its_writers_batch_commits(tmp_path, db_path, monkeypatch):
    """In one process (the daemon) a batch commit waits while a restore of the same database
    runs, at most MAX_DEFER_S: the restore meets at most one commit per MAX_DEFER_S."""
    import threading
    import time

    monkeypatch.setattr("chunkd.store.fairness.MAX_DEFER_S", 1.0)
    monkeypatch.setattr("chunkd.store.writing.BATCH_BYTES", 1 << 20)
    with ChunkStore.open_writer(db_path) as store:
        ingest_file(save(state(1), tmp_path / "m_1.pth"), store, IngestOptions())
        reader = ChunkStore.open_reader(db_path)
        committed_at: list[float] = []
        real_flush = __import__("chunkd.store.writing", fromlist=["RoundWriter"]).RoundWriter.flush

        def flush(self):
            real_flush(self)
            committed_at.append(time.monotonic())

        monkeypatch.setattr("chunkd.store.writing.RoundWriter.flush", flush)

        def write_batches() -> None:
            writer = store.begin_round()
            for i in range(3):
                data = os.urandom(1 << 20)
                writer.add_chunk(f"{i:064x}", "raw", data, len(data))
            writer.abort()

        with reader.reading():
            started = time.monotonic()
            lane = threading.Thread(target=write_batches)
            lane.start()
            time.sleep(0.5)
            assert committed_at == []  # deferred while the restore reads
        lane.join()
        assert committed_at and committed_at[0] - started >= 0.5
        assert committed_at[0] - started < 1.5  # bounded: MAX_DEFER_S, then it commits
        reader.close()
