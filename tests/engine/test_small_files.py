"""Issue 20: the per-file fixed cost of a small checkpoint.

A file of a few KiB is hashed, checked and encoded on the writer's own thread (no worker thread
started per file, no hand-off per chunk); a bigger one keeps the pipeline. Either way the round
comes back byte-identical, and a damaged small file is still refused with nothing stored.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from chunkd.errors import ChunkdError
from chunkd.ingest import INLINE_MAX_BYTES, IngestOptions, ingest_file
from chunkd.store import ChunkStore
from tests.daemon.checkpoints import restored_bytes, save_model


@pytest.fixture
def thread_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads started while the test runs (the real ``start`` still runs)."""
    started: list[str] = []
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return started


def test_small_checkpoint_is_ingested_without_starting_a_thread(
    tmp_path: Path, thread_starts: list[str]
) -> None:
    db = tmp_path / "client_a_chunks.db"
    files = [tmp_path / f"model_round_{r}.pth" for r in (1, 2)]
    generator = torch.Generator().manual_seed(1)
    weights = torch.randn(512, generator=generator)
    data = []
    for f in files:  # FedAvg-like: every weight moves a little, so round 1 links to round 2
        weights = weights + 1e-3 * torch.randn(512, generator=generator)
        torch.save({"fc.weight": weights}, f)
        data.append(f.read_bytes())
    assert all(len(d) < 8 << 10 for d in data)
    with ChunkStore.open_writer(db) as store:
        thread_starts.clear()
        results = [ingest_file(f, store, IngestOptions()) for f in files]
    assert thread_starts == []  # before issue 20: three threads started per file
    assert [r.round_num for r in results] == [1, 2]
    assert results[1].linked_chunks > 0  # the link step ran, inline too
    assert [restored_bytes(db, r) for r in (1, 2)] == data


def test_small_checkpoint_with_a_callers_pool_starts_no_thread_of_its_own(
    tmp_path: Path, thread_starts: list[str]
) -> None:
    """The daemon passes its pool: the per-file sequential worker is not started either."""
    path = tmp_path / "model_round_1.pth"
    data = save_model(path, seed=2, elements=256)
    with (
        ThreadPoolExecutor(max_workers=2) as pool,
        ChunkStore.open_writer(tmp_path / "c.db") as store,
    ):
        for _ in range(2):
            pool.submit(time.sleep, 0.05)  # both of the pool's threads exist before the ingest
        thread_starts.clear()
        ingest_file(path, store, IngestOptions(), pool=pool)
        assert thread_starts == []
    assert restored_bytes(tmp_path / "c.db", 1) == data


def test_bigger_checkpoint_keeps_the_worker_pipeline(
    tmp_path: Path, thread_starts: list[str]
) -> None:
    path = tmp_path / "model_round_1.pth"
    data = save_model(path, seed=3, elements=(INLINE_MAX_BYTES // 4) + 4096)
    assert len(data) > INLINE_MAX_BYTES
    with ChunkStore.open_writer(tmp_path / "c.db") as store:
        thread_starts.clear()
        ingest_file(path, store, IngestOptions())
    assert any(name.startswith("chunkd-filehash") for name in thread_starts)
    assert restored_bytes(tmp_path / "c.db", 1) == data


def test_damaged_small_checkpoint_is_refused_inline_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "model_round_1.pth"
    generator = torch.Generator().manual_seed(5)
    torch.save({"w": torch.randn(512, generator=generator)}, path)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"data/0") + 64  # inside the tensor's bytes: its CRC-32 no longer matches
    raw[at : at + 8] = bytes(8)
    path.write_bytes(bytes(raw))
    with ChunkStore.open_writer(tmp_path / "c.db") as store:
        with pytest.raises(ChunkdError):
            ingest_file(path, store, IngestOptions())
        assert list(store.round_numbers()) == []
        assert store.stats().stored_bytes == 0
