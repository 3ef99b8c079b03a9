"""The values the store hands out: rounds, chunk references, chunks, figures, file identities.

Plain frozen data, no I/O; the engine and the daemon pass these around instead of rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RoundInfo:
    """A stored version of a round, as ``chunkd list`` shows it.

    ``generation`` counts how often the round's number was rewritten from the same path (a rerun
    or a resumed job): 0 for the first version. The current version of a round is its highest
    generation; earlier ones stay restorable until retention removes them. ``run`` orders
    versions in time (see :mod:`chunkd.runs`: a rewrite or a restarted job starts a new run), so
    "newest" means (run, round_num). ``written_ns`` is the ingested file's mtime and
    ``ingest_seq`` the order of commits (both None for versions stored by format 2).
    """

    round_num: int
    file_sha256: str
    file_size: int
    flat_bytes: int
    chunk_count: int
    new_chunks: int
    new_bytes: int
    source_path: str | None
    created_at: str
    generation: int = 0
    run: int = 0
    written_ns: int | None = None
    ingest_seq: int | None = None
    current: bool = True

    @property
    def order_key(self) -> tuple[int, int, int]:
        """Newest last: a later run beats a higher round number of an earlier run."""
        return (self.run, self.round_num, self.generation)


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A round's chunk: its position, its hash and the seed's descriptor fields."""

    chunk_id: int
    chunk_hash: str
    parts_info: str
    flat_size: int


@dataclass(frozen=True, slots=True)
class StoredChunk:
    chunk_hash: str
    codec: str
    data: bytes
    raw_size: int
    #: the chunk a delta is coded against (``codec.is_delta``); None for a self-contained chunk
    base_hash: str | None = None


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A store's figures, from narrow tables only (cost O(rounds + chunks), never O(bytes))."""

    rounds: int
    chunks: int
    stored_bytes: int
    raw_bytes: int
    referenced_raw_bytes: int
    file_bytes: int
    db_file_bytes: int
    #: earlier generations of rewritten rounds, still restorable (not counted in ``rounds``)
    generations: int = 0
    #: pages SQLite holds free for reuse (part of ``db_file_bytes``)
    free_bytes: int = 0
    #: the checkpoint bytes of the earlier generations (part of ``file_bytes``)
    generation_file_bytes: int = 0
    #: stored chunk bytes that only earlier generations need (deltas' bases included): what
    #: keeping them costs on disk, and what retention gives back when they go
    generation_stored_bytes: int = 0

    @property
    def dedup_ratio(self) -> float:
        """Logical (per-round) chunk bytes over the distinct chunk bytes kept; >= 1."""
        return self.referenced_raw_bytes / self.raw_bytes if self.raw_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        """Distinct raw chunk bytes over their stored (compressed or delta) bytes; >= 1 almost
        always (a chunk that would grow is stored raw)."""
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 1.0

    @property
    def disk_ratio(self) -> float:
        """The honest headline: the plain files' bytes over the database file's size."""
        return self.file_bytes / self.db_file_bytes if self.db_file_bytes else 1.0


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What tells one version of a file from another without reading it.

    ``ctime`` is in it because it cannot be set by a user: a copy that preserves size and mtime
    (``cp -p``, ``rsync -t``) still gets a new ctime, so it is read, never mistaken as seen. A
    ``chmod`` changes the ctime too; then the content hash decides (see ``ingest``).
    """

    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A file the daemon has taken, and what became of it (ingested, duplicate, rejected)."""

    path: str
    identity: FileIdentity
    file_sha256: str | None
    round_num: int | None
    outcome: str
