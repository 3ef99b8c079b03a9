"""What a lane tells the operator about each file: the log line, the status counters, the hooks.

Split from :mod:`chunkd.daemon.lanes` (which decides what to do with a file); this module only
reports what came of it. Every function takes the lane's logger as it is *now* (the daemon wraps
it in a :class:`~chunkd.daemon.state.CountingLogger` after the lane is built) and the lane's
:class:`LaneStats`, which status requests read from other threads: plain values, each replaced
whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chunkd import log
from chunkd.daemon.settle import Superseded
from chunkd.errors import CheckpointError
from chunkd.ingest import OUTCOME_DUPLICATE, OUTCOME_REPLACED, OUTCOME_SEEN, IngestResult

#: What ``checkpoint.superseded`` suggests (docs/SPEC.md "Watching": a settle delay, no change).
SUPERSEDED_HINT = (
    "written again before settle_delay passed, so this version was never stored: write each "
    "round to its own file name, or lower settle_delay"
)


@dataclass(slots=True)
class LaneStats:
    """Figures for ``chunkd status``; written by the lane thread, read by anyone (plain ints)."""

    ingested: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: int = 0
    #: complete versions overwritten before they were taken (``checkpoint.superseded``)
    superseded: int = 0
    last_ingest: dict[str, object] | None = None
    last_error: str | None = None
    busy_since: float | None = None
    last_progress: float = field(default_factory=time.monotonic)


def report_ingest(logger: Any, stats: LaneStats, result: IngestResult) -> bool:
    """Log an ingest's outcome and count it; True if it stored a new round version."""
    if result.outcome == OUTCOME_SEEN:
        logger.debug("checkpoint.seen", path=result.path, round=result.round_num)
        return False
    if result.outcome == OUTCOME_DUPLICATE:
        stats.duplicates += 1
        logger.info(
            log.CHECKPOINT_DUPLICATE,
            path=result.path,
            round=result.round_num,
            sha256=result.file_sha256,
            bytes_in=result.bytes_in,
        )
        return False
    stats.ingested += 1
    stats.last_ingest = {
        "round": result.round_num,
        "path": result.path,
        "at": utc_now_iso(),
        "bytes_in": result.bytes_in,
    }
    if result.outcome == OUTCOME_REPLACED:
        # the earlier version stays restorable as generation ``generation - 1``
        logger.warning(
            log.ROUND_REPLACED,
            round=result.round_num,
            path=result.path,
            sha256=result.file_sha256,
            previous_sha256=result.previous_sha256,
            previous_path=result.previous_path,
            generation=result.generation,
        )
    logger.info(log.CHECKPOINT_INGESTED, **result.log_fields())
    return True


def report_rejected(logger: Any, stats: LaneStats, path: Path, error: CheckpointError) -> None:
    stats.rejected += 1
    stats.last_error = str(error)
    logger.warning(
        log.CHECKPOINT_REJECTED,
        path=str(path),
        error=str(error),
        error_code=error.code,
        reason=type(error).__name__,
    )


def report_superseded(logger: Any, stats: LaneStats, lost: Superseded) -> None:
    """``checkpoint.superseded`` at warning level: a complete checkpoint the client wrote is not
    stored and never will be (its bytes are gone), which an operator can act on (distinct file
    names, a shorter ``settle_delay``), unlike the ordinary churn of a file being written."""
    stats.superseded += 1
    fields = lost.log_fields()
    fields["lost_mtime"] = _iso_from_ns(lost.lost.mtime_ns)
    logger.warning(log.CHECKPOINT_SUPERSEDED, **fields, hint=SUPERSEDED_HINT)


def utc_now_iso() -> str:
    """ISO 8601 UTC with a Z, as in the log lines; sortable as text."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso_from_ns(ns: int) -> str:
    at = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
