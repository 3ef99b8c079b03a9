"""The store: one client's SQLite database (see :mod:`chunkd.store.core` and docs/DESIGN.md).

* :mod:`.records` — the values handed out (rounds, chunk refs, figures, file identities)
* :mod:`.schema` — tables, pragmas, format upgrades
* :mod:`.lock` — the one-writer lock on ``<db>.lock``
* :mod:`.gc` — the pure garbage-collection plan
* :mod:`.reading` — round queries, the read transaction; :mod:`.chunk_reading` — chunk queries
* :mod:`.core` — opening, writing; :mod:`.removing` — retention's deletes, GC, free space back
* :mod:`.writing` — :class:`RoundWriter`, one round in the crash-safe order
"""

from chunkd.store.core import BATCH_BYTES, BUSY_TIMEOUT_MS, CACHE_KIB, ChunkStore
from chunkd.store.records import (
    ChunkRef,
    FileIdentity,
    RoundInfo,
    SourceRecord,
    StoredChunk,
    StoreStats,
)
from chunkd.store.schema import SCHEMA_VERSION
from chunkd.store.writing import CommitResult, RoundWriter

__all__ = [
    "BATCH_BYTES",
    "BUSY_TIMEOUT_MS",
    "CACHE_KIB",
    "SCHEMA_VERSION",
    "ChunkRef",
    "ChunkStore",
    "CommitResult",
    "FileIdentity",
    "RoundInfo",
    "RoundWriter",
    "SourceRecord",
    "StoreStats",
    "StoredChunk",
]
