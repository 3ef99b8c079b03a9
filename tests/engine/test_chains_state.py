"""Any kept round version restores byte-identical after any sequence of ingests, rewrites,
aborted ingests and prunes, with delta chains on (a Hypothesis state machine).

The model remembers the bytes of every file it ever wrote; after each step every version the
store lists must restore to exactly the bytes whose SHA-256 it records, no chunk may be left
that nothing needs, no delta may be deeper than ``KEY_INTERVAL`` allows, and a prune keeps the
number of current rounds at the policy's bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from chunkd.deltas import KEY_INTERVAL, RECENT, chain_depths
from chunkd.errors import CheckpointError
from chunkd.ingest import IngestOptions, ingest_file
from chunkd.prune import prune_store
from chunkd.restore import restore_round
from chunkd.store import ChunkStore

OPTIONS = IngestOptions(chunk_num=3, max_chunk_bytes=4096, compression="auto", delta=True)


class ChainMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="chunkd-chains-"))
        self.store = ChunkStore.open_writer(self.dir / "client_1_chunks.db")
        self.weights = np.random.default_rng(0).standard_normal(1500).astype(np.float32)
        self.files: dict[str, bytes] = {}  # sha256 -> bytes of every file ever written
        self.next_round = 0
        self.rng = np.random.default_rng(1)
        RECENT.clear()

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        RECENT.clear()

    def _write(self, round_num: int, drift: float) -> Path:
        self.weights = self.weights + np.float32(drift) * self.rng.standard_normal(
            self.weights.shape
        ).astype(np.float32)
        path = self.dir / f"model_round_{round_num}.pth"
        state = {
            "w": torch.from_numpy(self.weights.copy()),
            "frozen": torch.arange(64, dtype=torch.float32),
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        path.write_bytes(data)
        self.files[hashlib.sha256(data).hexdigest()] = data
        return path

    @rule(drift=st.sampled_from([0.0, 1e-4, 1e-2, 1.0]))
    def ingest_next_round(self, drift: float) -> None:
        self.next_round += 1
        ingest_file(self._write(self.next_round, drift), self.store, OPTIONS)

    @precondition(lambda self: self.next_round > 0)
    @rule(data=st.data(), drift=st.sampled_from([1e-3, 1.0]))
    def rewrite_a_round(self, data: st.DataObject, drift: float) -> None:
        stored = self.store.round_numbers()
        if not stored:
            return
        round_num = data.draw(st.sampled_from(stored))
        result = ingest_file(self._write(round_num, drift), self.store, OPTIONS)
        assert result.outcome in ("replaced", "duplicate")

    @rule()
    def aborted_ingest(self) -> None:
        path = self._write(self.next_round + 1, 1e-3)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # truncated: rejected, nothing changes
        before = [(v.round_num, v.generation) for v in self.store.list_versions()]
        with contextlib.suppress(CheckpointError):
            ingest_file(path, self.store, OPTIONS)
        assert [(v.round_num, v.generation) for v in self.store.list_versions()] == before
        path.unlink()

    @rule(keep=st.integers(min_value=1, max_value=4))
    def prune(self, keep: int) -> None:
        prune_store(self.store, keep)
        assert len(self.store.round_numbers()) <= keep

    @invariant()
    def every_version_restores_byte_identical(self) -> None:
        for v in self.store.list_versions():
            out = io.BytesIO()
            restore_round(
                self.store, v.round_num, out.write, generation=None if v.current else v.generation
            )
            assert out.getvalue() == self.files[v.file_sha256]

    @invariant()
    def nothing_dead_and_chains_bounded(self) -> None:
        _referenced, bases, _ = self.store.chunk_graph()
        assert len(self.store.plan_garbage().dead) == 0
        depths = chain_depths(bases)
        assert max(depths.values(), default=0) < KEY_INTERVAL


ChainMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_delta_chains_keep_every_version_restorable = ChainMachine.TestCase


def _drifting_rounds(tmp_path: Path, rounds: int) -> list[Path]:
    rng = np.random.default_rng(5)
    w = rng.standard_normal(60_000).astype(np.float32)
    paths = []
    for r in range(1, rounds + 1):
        w = w + np.float32(1e-3) * rng.standard_normal(w.shape).astype(np.float32)
        path = tmp_path / f"model_round_{r}.pth"
        torch.save({"w": torch.from_numpy(w.copy())}, path)
        paths.append(path)
    return paths


def _stored_bytes(store: ChunkStore) -> int:
    return store.stats().stored_bytes


def test_chains_are_bounded_by_key_chunks(tmp_path):
    """Reverse chains: of 9 rounds kept, rounds 1-7 hang as deltas below round 8 (7 links, the
    bound), round 8 stays a key chunk because a link more would pass it, round 9 is newest."""
    RECENT.clear()
    with ChunkStore.open_writer(tmp_path / "c.db") as store:
        for path in _drifting_rounds(tmp_path, 9):
            ingest_file(path, store, IngestOptions(compression="auto", delta=True))
        _, bases, _ = store.chunk_graph()
        depths = chain_depths(bases)
        assert max(depths.values()) == KEY_INTERVAL - 1  # deltas are used, and bounded
        for r in (8, 9):
            assert all(depths[ref.chunk_hash] == 0 for ref in store.round_chunks(r))
        assert all(depths[ref.chunk_hash] == 7 for ref in store.round_chunks(1))


def test_the_newest_round_is_stored_whole(tmp_path):
    """After every ingest the newest round is key chunks only (``latest`` decodes no delta) and
    the round before it is deltas against it; retention then drops leaves, re-coding nothing."""
    RECENT.clear()
    paths = _drifting_rounds(tmp_path, 6)
    with ChunkStore.open_writer(tmp_path / "c.db") as store:
        for r, path in enumerate(paths, start=1):
            result = ingest_file(path, store, IngestOptions(compression="auto", delta=True))
            newest = {ref.chunk_id: ref.chunk_hash for ref in store.round_chunks(r)}
            assert all(store.read_chunk(h).base_hash is None for h in newest.values())
            if r > 1:
                assert result.linked_chunks == len(newest)
                for ref in store.round_chunks(r - 1):
                    assert store.read_chunk(ref.chunk_hash).base_hash == newest[ref.chunk_id]
        forms_before = {h: store.read_chunk(h).codec for h in store.chunk_graph()[1]}
        prune_store(store, 3)
        assert store.round_numbers() == [4, 5, 6]
        kept = store.chunk_graph()[1]
        assert all(store.read_chunk(h).codec == forms_before[h] for h in kept)  # none re-coded
        for r in (4, 5, 6):
            out = io.BytesIO()
            restore_round(store, r, out.write)
            assert out.getvalue() == paths[r - 1].read_bytes()


def test_keeping_n_rounds_with_delta_costs_no_more_than_without(tmp_path):
    """Retention re-codes a pruned chain start, so keep-3 with delta <= keep-3 without."""
    paths = _drifting_rounds(tmp_path, 8)
    sizes = {}
    for delta in (False, True):
        RECENT.clear()
        with ChunkStore.open_writer(tmp_path / f"c_{delta}.db") as store:
            for path in paths:
                ingest_file(path, store, IngestOptions(compression="auto", delta=delta))
                prune_store(store, 3)
            assert store.round_numbers() == [6, 7, 8]
            assert len(store.plan_garbage().dead) == 0
            for r in (6, 7, 8):
                out = io.BytesIO()
                restore_round(store, r, out.write)
                assert out.getvalue() == paths[r - 1].read_bytes()
            sizes[delta] = _stored_bytes(store)
    assert sizes[True] <= sizes[False]


def test_a_reader_survives_its_chain_start_being_recoded(tmp_path):
    """A restore read a delta, then ``forget`` removed the round its base belongs to (so the delta
    was re-coded as a key chunk and its base collected) before the reader fetched the base: the
    reader reads the chunk again, in its new form. And a key chunk read before the link step
    re-coded it as a delta still decodes in the form it was read."""
    from chunkd.forget import forget_version

    RECENT.clear()
    paths = _drifting_rounds(tmp_path, 3)
    with ChunkStore.open_writer(tmp_path / "c.db") as store:
        for path in paths[:2]:
            ingest_file(path, store, IngestOptions(compression="auto", delta=True))
        reader = ChunkStore.open_reader(tmp_path / "c.db")
        ref2 = store.round_chunks(2)[0]
        stale_key = reader.read_chunk(ref2.chunk_hash)
        assert stale_key.base_hash is None  # round 2 is newest: stored whole
        ingest_file(paths[2], store, IngestOptions(compression="auto", delta=True))
        assert store.read_chunk(ref2.chunk_hash).base_hash is not None  # now a delta on round 3
        assert hashlib.sha256(reader.decode_chunk(stale_key)).hexdigest() == ref2.chunk_hash

        stale = reader.read_chunk(ref2.chunk_hash)
        assert stale.base_hash is not None
        forget_version(store, 3)  # round 3 goes: round 2's chunk becomes a key chunk again
        assert store.read_chunk(ref2.chunk_hash).base_hash is None
        RECENT.clear()
        raw = reader.decode_chunk(stale)
        assert hashlib.sha256(raw).hexdigest() == ref2.chunk_hash
        reader.close()


def test_the_recent_cache_keeps_what_the_next_round_needs():
    """Plain LRU would evict, round after round, exactly the chunks needed next once a model is
    larger than the cache: here a full cache keeps its chunks until taken (or stale)."""
    from chunkd.deltas import RecentChunks

    cache = RecentChunks(max_bytes=3, stale_s=3600)
    for name in "abcd":  # round r: four 1-byte chunks, one more than fits
        cache.put(name, name.encode())
    assert [cache.get(n) for n in "abcd"] == [b"a", b"b", b"c", None]
    assert cache.take("a") == b"a" and cache.get("a") is None  # round r+1 used it
    cache.put("A", b"A")  # its own chunk takes the freed room
    assert cache.get("A") == b"A" and cache.get("b") == b"b"
    stale = RecentChunks(max_bytes=1, stale_s=0.0)
    stale.put("x", b"x")
    stale.put("y", b"y")  # nothing waits for x any more: it goes
    assert stale.get("x") is None and stale.get("y") == b"y"


def test_the_recent_cache_shrinks_to_its_configured_size():
    """``delta_cache`` bounds the cache from the moment the daemon sets it: the oldest go."""
    from chunkd.deltas import RecentChunks

    cache = RecentChunks(max_bytes=8, stale_s=3600)
    for name in "abcd":
        cache.put(name, name.encode() * 2)
    cache.resize(4)
    assert [cache.get(n) for n in "abcd"] == [None, None, b"cc", b"dd"]
    cache.resize(0)
    cache.put("e", b"e")
    assert cache.get("e") is None and cache.get("d") is None


def test_a_promoted_delta_keeps_its_codec_family(tmp_path):
    """``forget`` of the newest round of a ``max`` store re-codes the round before it (deltas on
    the forgotten one) as key chunks: pcodec ones, not the ``auto`` family."""
    from chunkd.forget import forget_version

    options = IngestOptions(compression="max", delta=True)
    paths = _drifting_rounds(tmp_path, 3)
    with ChunkStore.open_writer(tmp_path / "c.db") as store:
        for path in paths:
            ingest_file(path, store, options)
        assert all(
            store.read_chunk(r.chunk_hash).codec.startswith("dpco") for r in store.round_chunks(2)
        )
        forget_version(store, 3)
        codecs = {store.read_chunk(r.chunk_hash).codec for r in store.round_chunks(2)}
        assert codecs and all(c.startswith("pco") for c in codecs), codecs
        out = io.BytesIO()
        restore_round(store, 2, out.write)
        assert out.getvalue() == paths[1].read_bytes()
