"""Retention leaves at most one round free (docs/DESIGN.md), right after a backlog as at steady
state, without rewriting what stays, and in bounded memory.

Real torch.save files of a model whose every weight moves each round (FedAvg-like), real SQLite
databases; the bytes written are the kernel's count for this process (``/proc/self/io``).
"""

from __future__ import annotations

import gc
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.memory import PeakSampler
from chunkd.deltas import RECENT
from chunkd.ingest import IngestOptions, ingest_file
from chunkd.prune import prune_store
from chunkd.restore import restore_round
from chunkd.store import ChunkStore
from chunkd.store.compaction import ChunkPlace, plan_compaction, target_pages

ROUNDS = 10
KEEP = 3
#: ~1 MiB per round: 4 KiB pages, 16 chunks of 64 KiB
OPTIONS = {
    delta: IngestOptions(compression="auto", delta=delta, max_chunk_bytes=64 << 10)
    for delta in (False, True)
}


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        if key == "write_bytes":
            return int(value)
    raise AssertionError("no write_bytes in /proc/self/io")


def moving_rounds(directory: Path, rounds: int, elements: int = 256 << 10) -> list[Path]:
    rng = np.random.default_rng(7)
    weights = rng.standard_normal(elements).astype(np.float32)
    paths = []
    for r in range(1, rounds + 1):
        weights = weights + np.float32(1e-3) * rng.standard_normal(weights.shape).astype(np.float32)
        path = directory / f"model_round_{r}.pth"
        torch.save({"body.weight": torch.from_numpy(weights.copy())}, path)
        paths.append(path)
    return paths


@dataclass
class AfterPrune:
    db_bytes: int
    kept_bytes: int  # stored bytes of every chunk left
    round_bytes: int  # one round's worth (what the store leaves free)
    freed: int
    recoded: int  # stored bytes of the chunks retention re-coded
    written: int


def prune_and_measure(store: ChunkStore) -> AfterPrune:
    before = {h: base for h, base in store.chunk_graph()[1].items() if base is not None}
    start = write_bytes()
    result = prune_store(store, KEEP)
    written = write_bytes() - start
    _, bases, sizes = store.chunk_graph()
    recoded = sum(sizes[h] for h in before if h in sizes and bases.get(h) is None)
    page_size = store._query("PRAGMA page_size")[0][0]
    return AfterPrune(
        db_bytes=store.path.stat().st_size,
        kept_bytes=sum(sizes.values()),
        round_bytes=store.round_pages() * page_size,
        freed=result.bytes_removed,
        recoded=recoded,
        written=written,
    )


def check(after: AfterPrune, store: ChunkStore) -> None:
    """File <= kept rounds + one round (+ the tables' own pages and each kept chunk's partial
    last page); a prune writes at most 1.2x what it frees, plus its re-coding (written and its
    old form freed in the same transaction: twice the re-coded bytes)."""
    page_size = store._query("PRAGMA page_size")[0][0]
    chunks = len(store.chunk_graph()[2])
    overhead = (64 + chunks) * page_size
    assert after.db_bytes <= after.kept_bytes + after.round_bytes + overhead, after
    if after.freed:
        assert after.written <= 1.2 * after.freed + 2 * after.recoded + 64 * page_size, after


def restores(store: ChunkStore, paths: list[Path], rounds: list[int]) -> None:
    assert store.round_numbers() == rounds
    for r in rounds:
        out = io.BytesIO()
        restore_round(store, r, out.write)
        assert out.getvalue() == paths[r - 1].read_bytes()


def test_a_prune_leaves_at_most_one_round_free(tmp_path):
    """After a backlog (10 rounds in, then keep 3) and at steady state (a prune after every
    round), with and without delta: the database holds its kept rounds plus at most one round,
    the prune writes little more than it frees, and keep-3 with delta is never larger on disk
    than keep-3 without. Before: 16 MiB and 50% of the file could stay free (the backlog's
    database was ~3x its kept rounds here), and a vacuum moved the kept rounds page by page
    (2.9 bytes written per byte moved)."""
    paths = moving_rounds(tmp_path, ROUNDS)
    sizes: dict[tuple[str, bool], int] = {}
    for delta in (False, True):
        RECENT.clear()
        with ChunkStore.open_writer(tmp_path / f"backlog_{delta}.db") as store:
            for path in paths:
                ingest_file(path, store, OPTIONS[delta])
            after = prune_and_measure(store)
            check(after, store)
            assert after.db_bytes < 0.6 * ROUNDS / KEEP * after.kept_bytes  # it did shrink
            restores(store, paths, [8, 9, 10])
            sizes["backlog", delta] = after.db_bytes
        RECENT.clear()
        with ChunkStore.open_writer(tmp_path / f"steady_{delta}.db") as store:
            for path in paths:
                ingest_file(path, store, OPTIONS[delta])
                check(prune_and_measure(store), store)
            restores(store, paths, [8, 9, 10])
            sizes["steady", delta] = store.path.stat().st_size
    assert sizes["backlog", True] <= sizes["backlog", False], sizes
    assert sizes["steady", True] <= sizes["steady", False], sizes


def test_returning_free_space_copies_the_kept_rounds_instead_of_moving_pages(tmp_path):
    """The kept rounds of a backlog lie at the end of the file: they are copied into the free
    pages below (each page written about once) instead of being moved page by page by SQLite's
    incremental vacuum (about three times: the page, its old content in the journal, and the
    page that points to it). Same database, same final size, at most 3/4 of SQLite's writes
    (measured: 0.45). A 4 MiB model, so 16 KiB pages as every model from 4 MiB up has."""
    paths = moving_rounds(tmp_path, ROUNDS, elements=1 << 20)
    db = tmp_path / "c.db"
    options = IngestOptions(compression="none", delta=False, max_chunk_bytes=512 << 10)
    with ChunkStore.open_writer(db) as store:
        for path in paths:
            ingest_file(path, store, options)
        store.delete_rounds(range(1, ROUNDS - KEEP + 1))
        store.collect_garbage()
    shutil.copy(db, tmp_path / "sqlite.db")
    os.sync()  # a page still dirty from the copy would not be counted when written again
    with ChunkStore.open_writer(db) as store:
        start = write_bytes()
        returned = store.return_free_space()
        ours = write_bytes() - start
        kept = sum(store.chunk_graph()[2].values())
        restores(store, paths, [8, 9, 10])
    assert returned > 1.8 * kept  # six of the seven rounds freed went back
    with ChunkStore.open_writer(tmp_path / "sqlite.db") as store:
        page_size = store._query("PRAGMA page_size")[0][0]
        start = write_bytes()
        store._conn.executescript(f"PRAGMA incremental_vacuum({returned // page_size});")
        theirs = write_bytes() - start
        assert abs(store.path.stat().st_size - db.stat().st_size) <= 2 * page_size
    assert ours <= 0.75 * theirs, (ours, theirs, kept)


def test_retention_memory_is_bounded_by_its_batches(tmp_path):
    """A backlog prune that must bring 48 MiB of kept rounds down from the end of the file
    raises this process's RssAnon by well under that: the writer does not spill its cache, so
    only bounded transactions keep it bounded. Before: one incremental vacuum moved everything
    in one transaction and held every page it dirtied (+100 MiB here; +520 MiB for a 256 MiB
    model in the daemon)."""
    paths = moving_rounds(tmp_path, 6, elements=4 << 20)  # 16 MiB rounds
    options = IngestOptions(compression="none", delta=False, max_chunk_bytes=1 << 20)
    with ChunkStore.open_writer(tmp_path / "c.db") as store:
        for path in paths:
            ingest_file(path, store, options)
            path.unlink()
        store.release_memory()
        gc.collect()
        with PeakSampler(interval_s=0.002) as sampler:
            result = prune_store(store, 3)
        assert result.bytes_returned > 24 << 20  # two of the three freed rounds
        grew_mib = (sampler.peak_kib - sampler.baseline_kib) / 1024
        assert grew_mib < 32, grew_mib


@pytest.mark.parametrize(
    ("count", "free", "allowance", "expected"),
    [(100, 10, 20, 100), (100, 30, 20, 90), (100, 30, 0, 70), (100, 0, 0, 100)],
)
def test_the_target_keeps_one_round_of_free_pages(count, free, allowance, expected):
    assert target_pages(count, free, allowance) == expected


def test_only_chunks_mostly_past_the_end_are_copied():
    places = [
        ChunkPlace(1, 95, 4096 * 10, pages=10, pages_past=5),  # half past: copied
        ChunkPlace(2, 91, 4096 * 10, pages=10, pages_past=1),  # one page: SQLite moves it
        ChunkPlace(3, 80, 4096 * 10, pages=10, pages_past=0),
        ChunkPlace(4, 99, 4096 * 10, pages=10, pages_past=10),
    ]
    plan = plan_compaction(places, target=90, batch_bytes=4096 * 10)
    assert [[p.rowid for p in batch] for batch in plan.batches] == [[4], [1]]


@pytest.mark.parametrize("rows", [3, 400])
def test_chunk_places_name_the_row_of_every_chain(tmp_path, rows):
    """dbstat's cell paths map to rowids (a root leaf, and a tree of interior pages): in a file
    that only grew, each later row's chain ends further down the file."""
    from chunkd.store.compaction import chunk_places

    with ChunkStore.open_writer(tmp_path / "c.db") as store:
        conn = store._conn
        conn.execute("BEGIN IMMEDIATE")
        for i in range(rows):
            data = bytes([i % 251]) * 20_000
            conn.execute(
                "INSERT INTO chunk_data (chunk_hash, data, codec, raw_size)"
                " VALUES (?, ?, 'raw', ?)",
                (f"{i:064x}", data, len(data)),
            )
        conn.execute("COMMIT")
        places = chunk_places(conn, target=0)
        assert places is not None
        ids = [r[0] for r in conn.execute("SELECT id FROM chunk_data ORDER BY id")]
    assert [p.rowid for p in places] == ids
    assert [p.last_page for p in places] == sorted(p.last_page for p in places)
    assert all(p.pages == p.pages_past >= 4 for p in places)
