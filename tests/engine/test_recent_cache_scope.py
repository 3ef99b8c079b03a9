"""The ingest's recent-chunk cache is shared by every client of a daemon; a hash alone must never
fetch another database's bytes from it (issue 19).

A tenant whose database lives in its own client directory (the default ``db_path``) can edit it:
here alice renames a chunk of her round 1 to the hash of a chunk bob ingested a moment ago. If the
cache answered by hash alone, the link step of alice's next round would take bob's bytes from it
and store them, as a delta, in alice's database, where she can read them.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import torch

from chunkd.deltas import RECENT
from chunkd.ingest import IngestOptions, ingest_file
from chunkd.store import ChunkStore

OPTIONS = IngestOptions(chunk_num=1, max_chunk_bytes=1 << 20, compression="auto", delta=True)


def _save(path: Path, seed: int, scale: float = 1.0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(64, 64, generator=generator) * scale
    buf = io.BytesIO()
    torch.save({"fc.weight": weights}, buf)
    path.write_bytes(buf.getvalue())
    return path


def _rename_chunk(db: Path, old: str, new: str) -> None:
    """What a tenant with write access to its own database can do: claim another chunk's hash."""
    with sqlite3.connect(db) as conn:
        for table in ("chunk_metadata", "chunk_data", "chunk_info"):
            conn.execute(f"UPDATE {table} SET chunk_hash = ? WHERE chunk_hash = ?", (new, old))


def test_the_recent_cache_never_serves_a_chunk_to_a_database_that_does_not_hold_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "bob").mkdir()
    (tmp_path / "alice").mkdir()
    bob_db, alice_db = tmp_path / "bob/client_bob_chunks.db", tmp_path / "alice/client_alice.db"
    with ChunkStore.open_writer(bob_db) as bob:
        ingest_file(_save(tmp_path / "bob/model_round_1.pth", seed=1), bob, OPTIONS)
        (bob_chunk,) = (ref.chunk_hash for ref in bob.round_chunks(1))
        bob_bytes = bob.read_raw_chunk(bob_chunk)

    with ChunkStore.open_writer(alice_db) as alice:
        # FedAvg: every client starts each round from the same global model, so near bob's
        ingest_file(
            _save(tmp_path / "alice/model_round_1.pth", seed=1, scale=1.0002), alice, OPTIONS
        )
        (alice_chunk,) = (ref.chunk_hash for ref in alice.round_chunks(1))
    _rename_chunk(alice_db, alice_chunk, bob_chunk)

    with ChunkStore.open_writer(alice_db) as alice:
        assert RECENT.of(alice).get(bob_chunk) is None  # bob's entry is not alice's to see
        # round 2 is round 1 nudged: the link step codes round 1's chunk ("bob_chunk") against it
        ingest_file(
            _save(tmp_path / "alice/model_round_2.pth", seed=1, scale=1.0001), alice, OPTIONS
        )
        assert alice.read_raw_chunk(bob_chunk) != bob_bytes

    with ChunkStore.open_writer(bob_db) as bob:  # bob's own entry is still there for his link
        assert RECENT.of(bob).get(bob_chunk) == bob_bytes
