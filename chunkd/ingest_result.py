"""What one ingest is asked to do and what it did: :class:`IngestOptions`, :class:`IngestResult`.

The values that cross the engine's edge: the daemon's lanes, ``chunkd ingest --db``,
the summaries and the logs all read an :class:`IngestResult`, and none of them needs the
pipeline that made it. Kept apart from :mod:`chunkd.ingest` (the rules for one file) and
:mod:`chunkd.ingest_pipeline` (its bytes into the store), which both build results, so that
neither imports the other for them. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from chunkd import rounds

OUTCOME_INGESTED = "ingested"
OUTCOME_REPLACED = "replaced"
OUTCOME_DUPLICATE = "duplicate"
OUTCOME_SEEN = "seen"  # path, size and mtime already taken: not even read

#: ``progress(bytes_done, bytes_total)``: called from the writer's thread after each chunk is
#: stored, so a daemon can prove liveness (watchdog) and report long ingests; must be cheap.
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class IngestOptions:
    chunk_num: int = 10
    max_chunk_bytes: int = 1 << 20
    compression: str = "auto"
    delta: bool = True
    round_regex: re.Pattern[str] = re.compile(rounds.DEFAULT_ROUND_REGEX)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one ingest did; the fields of the ``checkpoint.ingested`` log line."""

    outcome: str
    path: str
    round_num: int | None
    bytes_in: int
    chunks: int
    chunks_new: int
    bytes_new: int
    file_sha256: str
    duration_ms: float
    #: the round's tensor bytes (its chunks' raw size) and how many of them were new
    tensor_bytes: int = 0
    tensor_bytes_new: int = 0
    #: for a rewritten round: the version it superseded (now an earlier generation)
    generation: int = 0
    previous_sha256: str | None = None
    previous_path: str | None = None
    #: the link step (chunkd.deltas): the previous round's chunks re-coded as deltas on this one,
    #: the stored bytes that saved, and how long it took (after the round was committed)
    linked_chunks: int = 0
    linked_saved_bytes: int = 0
    link_ms: float = 0.0

    @property
    def dedup_ratio(self) -> float:
        """Share of this round's tensor bytes that were already stored: 0.0 = all new, 1.0 = none.

        A share rather than "x:1" so that it stays finite for a round that adds nothing.
        """
        if not self.tensor_bytes:
            return 1.0
        return round(1 - self.tensor_bytes_new / self.tensor_bytes, 4)

    @property
    def mb_per_s(self) -> float:
        return round(self.bytes_in / 1e6 / (self.duration_ms / 1e3), 1) if self.duration_ms else 0.0

    def log_fields(self) -> dict[str, object]:
        return {
            "round": self.round_num,
            "path": self.path,
            "bytes_in": self.bytes_in,
            "chunks": self.chunks,
            "chunks_new": self.chunks_new,
            "bytes_new": self.bytes_new,
            "dedup_ratio": self.dedup_ratio,
            "duration_ms": round(self.duration_ms, 1),
            "mb_per_s": self.mb_per_s,
            "sha256": self.file_sha256,
            **(
                {"generation": self.generation, "previous_sha256": self.previous_sha256}
                if self.previous_sha256
                else {}
            ),
            **(
                {
                    "delta_linked": self.linked_chunks,
                    "delta_saved": self.linked_saved_bytes,
                    "link_ms": round(self.link_ms, 1),
                }
                if self.linked_chunks
                else {}
            ),
        }
