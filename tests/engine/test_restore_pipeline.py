"""A restore decodes on both cores: chunks are read and decoded ahead on two threads, in order."""

from __future__ import annotations

import io
import threading

import numpy as np
import torch

from chunkd.ingest import IngestOptions, ingest_file
from chunkd.restore import DECODE_WORKERS, restore_round
from chunkd.store import ChunkStore


def test_a_restore_decodes_chunks_on_two_threads(tmp_path):
    """Before, one prefetch thread read and decoded every chunk while the other core only
    hashed and wrote: decoding was the restore's critical path."""
    rng = np.random.default_rng(5)
    path = tmp_path / "model_round_1.pth"
    weights = rng.standard_normal(4 << 20 >> 2).astype(np.float32)  # 4 MiB, 16 chunks
    torch.save({"fc.weight": torch.from_numpy(weights)}, path)
    options = IngestOptions(max_chunk_bytes=256 << 10, compression="auto", delta=True)
    with ChunkStore.open_writer(tmp_path / "client_1_chunks.db") as store:
        ingest_file(path, store, options)
    decoders: set[str] = set()
    out = io.BytesIO()

    def write(data: bytes | memoryview) -> None:
        decoders.update(
            t.name for t in threading.enumerate() if t.name.startswith("chunkd-restore_")
        )
        out.write(data)

    with ChunkStore.open_reader(tmp_path / "client_1_chunks.db") as store:
        restore_round(store, 1, write, verify_chunks=False, recent=None)
    assert out.getvalue() == path.read_bytes()
    assert DECODE_WORKERS == 2
    assert len(decoders) == DECODE_WORKERS, decoders
