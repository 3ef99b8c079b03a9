"""Retention on a real database: old rounds go, then chunks no round uses, then the free pages."""

from __future__ import annotations

import collections
import os

import torch
from strategies import random_tensor, save_checkpoint

from chunkd.prune import prune_store
from chunkd.verify import verify_store


def distinct_state(seed: int) -> collections.OrderedDict[str, torch.Tensor]:
    """~256 KiB of random float32, different for every seed."""
    return collections.OrderedDict(
        [
            ("body.weight", random_tensor(torch.float32, (256, 240), seed)),
            ("head.weight", random_tensor(torch.float32, (16, 256), seed + 10_000)),
        ]
    )


def ingest_rounds(engine, tmp_path, store, states) -> dict[int, bytes]:
    files = {}
    for round_num, state in states.items():
        path = tmp_path / f"model_round_{round_num}.pth"
        files[round_num] = save_checkpoint(state, path)
        result = engine.ingest(path, store, chunk_num=10, max_chunk_bytes=64 << 10)
        assert result.round_num == round_num
    return files


def test_prune_removes_old_rounds_and_their_chunks(tmp_path, writer_store, db_path, engine):
    files = ingest_rounds(
        engine, tmp_path, writer_store, {r: distinct_state(r) for r in range(1, 9)}
    )
    size_before = os.path.getsize(db_path)
    result = prune_store(writer_store, 3)
    assert result.plan.remove == (1, 2, 3, 4, 5)
    assert result.plan.keep == (6, 7, 8)
    assert not result.dry_run
    assert writer_store.round_numbers() == [6, 7, 8]
    assert engine.orphan_chunks(db_path) == 0
    assert engine.query(db_path, "SELECT COUNT(*) FROM chunk_metadata WHERE round_num < 6") == [
        (0,)
    ]
    assert result.chunks_removed == 5 * writer_store.get_round(6).chunk_count
    for round_num in (6, 7, 8):
        assert engine.restore(writer_store, round_num) == files[round_num]
    assert verify_store(writer_store).ok
    # five rounds were freed: all but one round's worth of pages went back to the filesystem
    assert os.path.getsize(db_path) < size_before
    assert 0 < engine.query(db_path, "PRAGMA freelist_count")[0][0] <= writer_store.round_pages()


def test_prune_gives_the_freed_space_back_to_the_filesystem(
    tmp_path, writer_store, db_path, engine
):
    """Beyond one round's worth, free pages go back. Regression: 'PRAGMA incremental_vacuum'
    through one execute() frees a single page (Python's sqlite3 steps it once)."""
    ingest_rounds(engine, tmp_path, writer_store, {r: distinct_state(r) for r in range(1, 9)})
    size_before = os.path.getsize(db_path)
    result = prune_store(writer_store, 3)
    assert result.bytes_removed > 5 * 250_000
    shrunk = size_before - os.path.getsize(db_path)
    assert result.bytes_returned == shrunk
    page_size = engine.query(db_path, "PRAGMA page_size")[0][0]
    assert shrunk >= 0.8 * result.bytes_removed - writer_store.round_pages() * page_size
    assert writer_store.vacuum_free_pages() > 0  # on demand: every free page
    assert engine.query(db_path, "PRAGMA freelist_count") == [(0,)]


def test_chunks_still_used_by_kept_rounds_stay(tmp_path, writer_store, db_path, engine):
    """Rounds that share a body and differ in the head: pruning keeps the shared chunks."""
    body = distinct_state(0)["body.weight"]
    states = {
        r: collections.OrderedDict(
            [("body.weight", body), ("head.weight", distinct_state(r)["head.weight"])]
        )
        for r in range(1, 6)
    }
    files = ingest_rounds(engine, tmp_path, writer_store, states)
    result = prune_store(writer_store, 2)
    assert result.plan.remove == (1, 2, 3)
    assert writer_store.round_numbers() == [4, 5]
    assert engine.orphan_chunks(db_path) == 0
    # only the head chunks of rounds 1-3 were unique to them
    assert 0 < result.chunks_removed <= 3 * 2
    assert engine.restore(writer_store, 4) == files[4]
    assert engine.restore(writer_store, 5) == files[5]
    assert verify_store(writer_store).ok


def test_dry_run_changes_nothing(tmp_path, writer_store, db_path, engine):
    ingest_rounds(engine, tmp_path, writer_store, {r: distinct_state(r) for r in range(1, 6)})
    before = engine.fingerprint(db_path)
    result = prune_store(writer_store, 2, dry_run=True)
    assert result.dry_run
    assert result.plan.remove == (1, 2, 3)
    assert result.plan.keep == (4, 5)
    assert (result.chunks_removed, result.bytes_removed, result.bytes_returned) == (0, 0, 0)
    assert engine.fingerprint(db_path) == before


def test_keep_zero_keeps_every_round(tmp_path, writer_store, db_path, engine):
    files = ingest_rounds(engine, tmp_path, writer_store, {r: distinct_state(r) for r in (3, 5, 9)})
    before = engine.fingerprint(db_path)
    result = prune_store(writer_store, 0)
    assert result.plan.remove == ()
    assert result.plan.keep == (3, 5, 9)
    after = engine.fingerprint(db_path)
    assert (after.rounds, after.chunk_rows, after.metadata_rows) == (
        before.rounds,
        before.chunk_rows,
        before.metadata_rows,
    )
    for round_num, data in files.items():
        assert engine.restore(writer_store, round_num) == data


def test_keep_more_than_stored_keeps_every_round(tmp_path, writer_store, db_path, engine):
    ingest_rounds(engine, tmp_path, writer_store, {r: distinct_state(r) for r in (1, 2)})
    before = engine.fingerprint(db_path)
    assert prune_store(writer_store, 5).plan.remove == ()
    assert engine.fingerprint(db_path).rounds == before.rounds


def test_leased_round_is_held_and_its_chunks_kept(tmp_path, writer_store, db_path, engine):
    files = ingest_rounds(
        engine, tmp_path, writer_store, {r: distinct_state(r) for r in range(1, 5)}
    )
    result = prune_store(writer_store, 1, leased={2})
    assert result.plan.held == (2,)
    assert result.plan.remove == (1, 3)
    assert writer_store.round_numbers() == [2, 4]
    assert engine.restore(writer_store, 2) == files[2]
    # the lease released, the next run removes round 2 and every chunk left unreferenced
    result = prune_store(writer_store, 1)
    assert result.plan.remove == (2,)
    assert writer_store.round_numbers() == [4]
    assert engine.orphan_chunks(db_path) == 0
    assert engine.restore(writer_store, 4) == files[4]


def test_replaced_round_leaves_no_orphans_after_prune(tmp_path, writer_store, db_path, engine):
    ingest_rounds(engine, tmp_path, writer_store, {1: distinct_state(1)})
    path = tmp_path / "model_round_1.pth"
    new = save_checkpoint(distinct_state(50), path)
    assert (
        engine.ingest(path, writer_store, chunk_num=10, max_chunk_bytes=64 << 10).outcome
        == "replaced"
    )
    prune_store(writer_store, 5)
    assert engine.orphan_chunks(db_path) == 0
    assert engine.restore(writer_store, 1) == new
