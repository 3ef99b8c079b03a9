"""Readers see one consistent chain: restores and verify beside retention that re-codes chains.

Retention re-codes a kept delta as a key chunk (``promote_orphaned_deltas``) and garbage
collection then removes its base. A reader that walked a chain one statement per link could meet
the old form of a link and then find its base gone, and ``verify`` decoded chunks read a batch
earlier: on a healthy store both reported damage (issue 17, finding 3). Here a writer ingests
FedAvg-like rounds with delta on and prunes to 3 after each, exactly as a daemon's lane does
(leases from the daemon's own :class:`LeaseTable`), while other threads restore and verify
through their own reader connections. Nothing may ever be reported damaged, and every restore
must give the bytes of the file that was ingested.

The recent-chunk cache the restores consult is shared with the ingest that takes its entries
(finding 4): a membership test followed by a read raised ``KeyError``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from chunkd.daemon.leases import LeaseTable
from chunkd.deltas import RECENT, RecentChunks
from chunkd.errors import NotFoundError
from chunkd.ingest import IngestOptions, ingest_file
from chunkd.prune import prune_store
from chunkd.restore import restore_round
from chunkd.store import ChunkStore
from chunkd.verify import verify_store

#: Eight chains per round, each up to three links long (KEY_INTERVAL), re-coded by every prune.
#: Measured at 9fe06a5 on a loaded 2-core machine: this shape failed 12 of 12 runs (24 chunks of
#: 16 KiB: 6 of 10; fewer promotions per prune put the collection closer to a walk's gap).
OPTIONS = IngestOptions(chunk_num=8, max_chunk_bytes=64 << 10, compression="auto", delta=True)
KEEP = 3
ROUNDS = 40
#: The writer stops after this long, however many rounds it wrote (the test stays < 20 s).
WRITE_S = 10.0
RESTORERS = 2
VERIFIERS = 1
CHAIN_READERS = 1
#: Restores defer the writer's batch commits while they run (the fairness gate): a short pause
#: between two lets it write, and so prune, more often.
PAUSE_S = 0.02
CLIENT = "1"
#: How long restores race the cache's churn (at 9fe06a5: KeyError within it in 6 of 6 runs).
CACHE_RACE_S = 3.0


def fedavg_rounds(count: int, elements: int = 96_000) -> list[bytes]:
    """torch.save files of one model drifting a little each round (so delta wins)."""
    rng = np.random.default_rng(7)
    weights = rng.standard_normal(elements).astype(np.float32)
    files = []
    for _ in range(count):
        weights = weights + np.float32(1e-3) * rng.standard_normal(elements).astype(np.float32)
        buf = io.BytesIO()
        torch.save({"fc.weight": torch.from_numpy(weights.copy()), "fc.bias": torch.zeros(16)}, buf)
        files.append(buf.getvalue())
    return files


@pytest.fixture
def recent_cleared() -> Iterator[None]:
    RECENT.clear()
    yield
    RECENT.clear()


def _until(stop: threading.Event, step: Callable[[], None]) -> int:
    steps = 0
    while not stop.is_set():
        step()
        steps += 1
    return steps


def test_readers_never_see_damage_while_retention_recodes_chains(tmp_path, recent_cleared):
    files = fedavg_rounds(ROUNDS)
    by_sha = {hashlib.sha256(data).hexdigest(): data for data in files}
    db = tmp_path / "client_1_chunks.db"
    leases = LeaseTable()
    stop = threading.Event()
    writer = ChunkStore.open_writer(db)

    def ingest(round_num: int) -> None:
        path = tmp_path / f"model_round_{round_num}.pth"
        path.write_bytes(files[round_num - 1])
        ingest_file(path, writer, OPTIONS)
        prune_store(writer, KEEP, leased=leases.leased(CLIENT))

    def write_rounds() -> None:
        deadline = time.monotonic() + WRITE_S
        try:
            for round_num in range(KEEP + 1, ROUNDS + 1):
                if stop.is_set() or time.monotonic() > deadline:
                    break  # a reader failed (its error is raised below), or time is up
                ingest(round_num)
        finally:
            stop.set()

    def restore_some(reader: ChunkStore, rng: np.random.Generator, use_cache: bool) -> None:
        stored = reader.round_numbers()
        # mostly the newest: its chunks have the longest chains, re-coded by the next prune
        round_num = stored[-1] if rng.random() < 0.75 else int(rng.choice(stored))
        with leases.hold(CLIENT, round_num):  # lease first, then look: as the daemon serves
            try:
                info = reader.get_round(round_num)
            except NotFoundError:
                return  # pruned between the listing and the lease
            out = io.BytesIO()
            try:
                restore_round(
                    reader,
                    round_num,
                    out.write,
                    verify_chunks=bool(rng.integers(2)),
                    recent=RECENT.of(reader) if use_cache else None,
                )
            except NotFoundError:
                return  # retention planned before our lease was taken: gone, not damaged
        assert out.getvalue() == by_sha[info.file_sha256], f"round {round_num}: wrong bytes"
        time.sleep(PAUSE_S)

    def restorer(seed: int) -> int:
        rng = np.random.default_rng(seed)
        with ChunkStore.open_reader(db) as reader:
            return _until(stop, lambda: restore_some(reader, rng, use_cache=seed % 2 == 1))

    def read_chains(reader: ChunkStore) -> None:
        """What a restore's prefetch (and the next ingest's delta-base fetch) does per chunk."""
        round_num = reader.round_numbers()[-1]
        with leases.hold(CLIENT, round_num):
            try:
                refs = reader.round_chunks(round_num) if reader.get_round(round_num) else []
            except NotFoundError:
                return
            for ref in refs:
                raw = reader.read_raw_chunk(ref.chunk_hash)
                assert hashlib.sha256(raw).hexdigest() == ref.chunk_hash

    def chain_reader() -> int:
        with ChunkStore.open_reader(db) as reader:
            return _until(stop, lambda: read_chains(reader))

    def verifier() -> int:
        with ChunkStore.open_reader(db) as reader:

            def check() -> None:
                report = verify_store(reader, hold=functools.partial(leases.hold, CLIENT))
                assert report.ok, f"verify reported damage: {report.problems}"

            return _until(stop, check)

    for round_num in range(1, KEEP + 1):
        ingest(round_num)
    try:
        with ThreadPoolExecutor(max_workers=RESTORERS + VERIFIERS + CHAIN_READERS) as pool:
            readers = [pool.submit(restorer, seed) for seed in range(RESTORERS)]
            verifies = [pool.submit(verifier) for _ in range(VERIFIERS)]
            chains = [pool.submit(chain_reader) for _ in range(CHAIN_READERS)]
            for future in [*readers, *verifies, *chains]:
                future.add_done_callback(lambda _: stop.set())
            write_rounds()
            restores = sum(f.result() for f in readers)
            verified = sum(f.result() for f in verifies)
            chains_read = sum(f.result() for f in chains)
        prune_store(writer, KEEP)  # the rounds leases held at the last run go now
        rounds_written = writer.highest_round()
    finally:
        stop.set()
        writer.close()
    counts = f"{restores} restores, {verified} verifies, {chains_read} chain passes"
    assert restores >= 20 and verified >= 5 and chains_read >= 20, counts
    assert rounds_written is not None and rounds_written >= 3 * KEEP, f"{rounds_written} rounds"
    with ChunkStore.open_reader(db) as reader:
        assert verify_store(reader).ok
        assert len(reader.round_numbers()) == KEEP


def test_the_recent_cache_is_read_with_one_atomic_look_up(tmp_path, recent_cleared):
    """A restore that finds a chunk in the cache while the next ingest takes it still restores
    (finding 4): at 9fe06a5 ``chunk in cache`` then ``cache[chunk]`` raised ``KeyError``."""
    files = fedavg_rounds(2, elements=24_000)
    db = tmp_path / "client_1_chunks.db"
    with ChunkStore.open_writer(db) as writer:
        for round_num, data in enumerate(files, start=1):
            path = tmp_path / f"model_round_{round_num}.pth"
            path.write_bytes(data)
            ingest_file(path, writer, OPTIONS)
    cache = RecentChunks(64 << 20)
    with ChunkStore.open_reader(db) as reader:
        raws = {
            ref.chunk_hash: reader.read_raw_chunk(ref.chunk_hash)
            for round_num in (1, 2)
            for ref in reader.round_chunks(round_num)
        }
    assert any(base is not None for base in _bases(db, 1))  # round 1 has chains to walk
    stop = threading.Event()

    def churn_once() -> None:  # the next ingest takes each entry; a later round puts it back
        for chunk_hash in raws:
            cache.take(chunk_hash)
        for chunk_hash, raw in raws.items():
            cache.put(chunk_hash, raw)

    def restore(round_num: int) -> None:
        out = io.BytesIO()
        with ChunkStore.open_reader(db) as reader:
            restore_round(reader, round_num, out.write, recent=cache)
        assert out.getvalue() == files[round_num - 1]

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over between any two bytecodes, often
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            churning = pool.submit(_until, stop, churn_once)
            deadline = time.monotonic() + CACHE_RACE_S
            try:
                restores = 0
                while time.monotonic() < deadline:
                    restore(1 + restores % 2)  # round 1's chains may stop at round 2's chunks
                    restores += 1
            finally:
                stop.set()
            assert churning.result() > 0 and restores > 20
    finally:
        sys.setswitchinterval(interval)


def _bases(db: Path, round_num: int) -> list[str | None]:
    with ChunkStore.open_reader(db) as reader:
        return [reader.read_chunk(r.chunk_hash).base_hash for r in reader.round_chunks(round_num)]


def _ingest_rounds(tmp_path: Path, files: list[bytes]) -> ChunkStore:
    writer = ChunkStore.open_writer(tmp_path / "client_1_chunks.db")
    for round_num, data in enumerate(files, start=1):
        path = tmp_path / f"model_round_{round_num}.pth"
        path.write_bytes(data)
        ingest_file(path, writer, OPTIONS)
    return writer


class _RetentionMidWalk(dict):
    """An empty ``known`` map (the walk asks it about every base before reading that base) that,
    when asked about ``trigger``, runs ``retention`` on another thread and gives it a second to
    commit: retention lands exactly between two links of one walk."""

    def __init__(self, trigger: str, retention: Callable[[], object]) -> None:
        super().__init__()
        self.trigger = trigger
        self.retention = retention
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.running: list[object] = []

    def _asked(self, chunk_hash: object) -> None:
        if chunk_hash == self.trigger and not self.running:
            self.running.append(future := self.pool.submit(self.retention))
            with contextlib.suppress(TimeoutError):
                future.result(timeout=1.0)  # type: ignore[union-attr]

    def get(self, chunk_hash: object, default: object = None) -> object:
        self._asked(chunk_hash)
        return default

    def __contains__(self, chunk_hash: object) -> bool:
        self._asked(chunk_hash)
        return False


def test_a_chain_is_read_from_one_snapshot(tmp_path, recent_cleared):
    """A commit that re-codes a link and collects its base lands between two links of a walk
    (round 1's chunk -> round 2's -> round 3's, old form -> round 4's): the walk still sees one
    state. ``forget`` of round 4 makes round 3's chunk a key and collects round 4's. At 9fe06a5
    (then with forward chains and retention doing the same) the walk found the base gone, re-read
    only the top chunk (unchanged) and reported damage."""
    from chunkd.forget import forget_version

    files = fedavg_rounds(4, elements=24_000)
    writer = _ingest_rounds(tmp_path, files)
    try:
        with ChunkStore.open_reader(writer.path) as reader:
            chains = {}
            for ref in reader.round_chunks(1):
                links = [reader.read_chunk(ref.chunk_hash)]
                while links[-1].base_hash is not None:
                    links.append(reader.read_chunk(links[-1].base_hash))
                chains[ref.chunk_hash] = links
            top, chain = next((h, c) for h, c in chains.items() if len(c) == 4)
            expected = reader.read_raw_chunk(top)
            trap = _RetentionMidWalk(chain[3].chunk_hash, lambda: forget_version(writer, 4))
            with trap.pool:
                raw = reader.read_raw_chunk(top, known=trap)
                trap.running[0].result()  # type: ignore[attr-defined]
            assert raw == expected
            assert reader.read_chain(chain[2].chunk_hash).links[0].base_hash is None  # re-coded
            assert not reader.has_chunk(chain[3].chunk_hash)  # and its base collected
            assert reader.read_raw_chunk(top) == expected
    finally:
        writer.close()


class _PrunedMidBatch:
    """The store as ``verify`` reads it; retention runs to completion right after the pass was
    handed its first delta chunk, so the rest of that batch (read in one statement before) holds
    deltas that retention then collected, with their bases."""

    def __init__(self, reader: ChunkStore, retention: Callable[[], object]) -> None:
        self._reader = reader
        self._retention = retention

    def iter_chunks(self) -> Iterator[object]:
        pruned = False
        for chunk in self._reader.iter_chunks():
            yield chunk
            if chunk.base_hash is not None and not pruned:
                pruned = True
                self._retention()
        assert pruned

    def __getattr__(self, name: str) -> object:
        return getattr(self._reader, name)


def test_verify_tells_a_chunk_removed_during_its_pass_from_a_damaged_one(tmp_path, recent_cleared):
    """At 9fe06a5 a chunk read a batch earlier and collected since failed to decode and was
    reported as "bytes do not match their SHA-256"; it is gone, which is no damage. Real damage
    found in the same pass is still reported."""
    files = fedavg_rounds(4, elements=24_000)
    writer = _ingest_rounds(tmp_path, files)
    try:
        with ChunkStore.open_reader(writer.path) as reader:
            report = verify_store(_PrunedMidBatch(reader, lambda: prune_store(writer, 1)))
            assert report.ok, report.problems
            assert reader.round_numbers() == [4]
            victim = reader.round_chunks(4)[3].chunk_hash
        damage = "UPDATE chunk_data SET data = zeroblob(length(data)) WHERE chunk_hash = ?"
        writer.transaction([(damage, (victim,))])
        with ChunkStore.open_reader(writer.path) as reader:
            report = verify_store(reader)
        assert [(p.round_num, p.chunk_id) for p in report.problems] == [(4, 3)]
    finally:
        writer.close()


def test_a_round_pruned_under_a_reader_without_a_lease_is_not_found(tmp_path, recent_cleared):
    """``restore --db`` beside a daemon holds no lease: retention may remove its round, chunks
    and all, mid-read. That round is no longer stored (``not_found``, exit 3); at 9fe06a5 it
    was reported as damage ("referenced but not stored", exit 5)."""
    files = fedavg_rounds(3, elements=48_000)
    writer = _ingest_rounds(tmp_path, files)
    pruned: list[object] = []

    def write(_data: object) -> None:
        if not pruned:
            pruned.append(prune_store(writer, 1))  # keeps round 3 only

    try:
        with ChunkStore.open_reader(writer.path) as reader:
            assert len(reader.round_chunks(1)) > 4  # more than the prefetch has read by then
            with pytest.raises(NotFoundError, match="removed by retention"):
                restore_round(reader, 1, write, recent=None)
            assert reader.round_numbers() == [3]
            out = io.BytesIO()
            restore_round(reader, 3, out.write, recent=None)
            assert out.getvalue() == files[2]
    finally:
        writer.close()
