"""``chunkd forget``: one named version goes, nothing else (issue 17, finding 8)."""

from __future__ import annotations

import pytest

from chunkd.errors import BusyError, NotFoundError
from chunkd.forget import forget_version
from chunkd.ingest import IngestOptions, ingest_file
from chunkd.prune import prune_store
from chunkd.store import ChunkStore
from chunkd.verify import verify_store
from tests.engine.test_invariants import restore_bytes, save, state
from tests.engine.test_order import take, write


def test_a_mis_numbered_round_can_be_forgotten(tmp_path, db_path):
    """``model_240605.pth`` is round 240605: it was ``latest`` and held a retention slot forever,
    pruning the real rounds, and no command removed it."""
    with ChunkStore.open_writer(db_path) as store:
        for r in range(1, 4):
            take(store, write(tmp_path, r, r, r)[0], 3)
        stray = tmp_path / "model_240605.pth"
        save(state(99), stray)
        take(store, stray, 3)
        assert store.latest_round() == 240605
        files = {r: write(tmp_path, r, r, r)[1] for r in range(4, 6)}
        for r in range(4, 6):
            take(store, tmp_path / f"model_round_{r}.pth", 3)
        assert store.round_numbers() == [4, 5, 240605]  # the stray costs a real round

        dry = forget_version(store, 240605, dry_run=True)
        assert dry.dry_run and dry.version.round_num == 240605
        assert store.round_numbers() == [4, 5, 240605]
        result = forget_version(store, 240605)
        assert result.chunks_removed > 0 and result.promoted is None
        assert store.round_numbers() == [4, 5]
        assert store.latest_round() == 5
        assert store.orphan_chunk_count() == 0
        for r, data in files.items():
            assert restore_bytes(store, r) == data
        assert verify_store(store).ok
        # the stray file is still on disk: it is not taken again
        ingest_file(stray, store, IngestOptions())
        assert store.round_numbers() == [4, 5]


def test_forgetting_a_current_version_makes_the_earlier_generation_current(tmp_path, db_path):
    path = tmp_path / "model_round_1.pth"
    with ChunkStore.open_writer(db_path) as store:
        first = save(state(1), path).read_bytes()
        ingest_file(path, store, IngestOptions())
        save(state(2), path)
        ingest_file(path, store, IngestOptions())
        assert store.get_round(1).generation == 1
        result = forget_version(store, 1)
        assert result.promoted is not None and result.promoted.generation == 0
        current = store.get_round(1)
        assert current.generation == 0 and current.current
        assert restore_bytes(store, 1) == first
        assert [v.generation for v in store.list_versions()] == [0]
        assert verify_store(store).ok
        # a later rewrite gets a generation number never used before
        save(state(3), path)
        ingest_file(path, store, IngestOptions())
        assert store.get_round(1).generation == 1


def test_forgetting_an_earlier_generation_leaves_the_current_one(tmp_path, db_path):
    path = tmp_path / "model_round_1.pth"
    with ChunkStore.open_writer(db_path) as store:
        save(state(1), path)
        ingest_file(path, store, IngestOptions())
        second = save(state(2), path).read_bytes()
        ingest_file(path, store, IngestOptions(delta=True, compression="auto"))
        forget_version(store, 1, generation=0)
        assert [(v.generation, v.current) for v in store.list_versions()] == [(1, True)]
        assert restore_bytes(store, 1) == second
        assert store.orphan_chunk_count() == 0
        assert verify_store(store).ok


def test_forget_refuses_what_is_not_stored_or_being_restored(tmp_path, db_path):
    with ChunkStore.open_writer(db_path) as store:
        for r in (1, 2):
            take(store, write(tmp_path, r, r, r)[0], 0)
        with pytest.raises(NotFoundError, match="stored rounds: 1, 2"):
            forget_version(store, 7)
        with pytest.raises(NotFoundError):
            forget_version(store, 1, generation=3)
        with pytest.raises(BusyError, match="being restored"):
            forget_version(store, 2, leased={2})
        assert store.round_numbers() == [1, 2]
        prune_store(store, 0)
