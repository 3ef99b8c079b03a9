"""Engine results as JSON-ready dicts: the ``result`` objects of the socket answers.

The daemon's handlers and the CLI's offline ``--db`` forms both build their output here, so
``chunkd list --json`` prints the same document whether it asked the daemon or read a database
itself, and the CLI renders both with one function. Keys are SPEC.md's (``client``, ``round``);
sizes are bytes; ratios are plain floats, never NaN or infinity (those are not JSON).
"""

from __future__ import annotations

from chunkd.ingest import IngestResult
from chunkd.prune import PruneResult
from chunkd.store import ChunkStore, RoundInfo
from chunkd.verify import VerifyReport


def _iso_utc(sqlite_timestamp: str) -> str:
    """SQLite's ``CURRENT_TIMESTAMP`` (``2026-05-01 12:00:00``, UTC) as ISO 8601 with a ``Z``."""
    return sqlite_timestamp.replace(" ", "T") + "Z" if sqlite_timestamp else sqlite_timestamp


def summarize_round(info: RoundInfo) -> dict[str, object]:
    return {
        "round": info.round_num,
        "file_size": info.file_size,
        "chunks": info.chunk_count,
        "new_chunks": info.new_chunks,
        "new_bytes": info.new_bytes,
        "created_at": _iso_utc(info.created_at),
        "sha256": info.file_sha256,
    }


def summarize_store(client_id: str, store: ChunkStore | None) -> dict[str, object]:
    """One client's rounds and space figures; ``store`` None is a client with no database yet."""
    if store is None:
        return {
            "client": client_id,
            "rounds": [],
            "round_count": 0,
            "latest_round": None,
            "file_bytes": 0,
            "stored_bytes": 0,
            "db_bytes": 0,
            "chunks": 0,
            "dedup_ratio": 1.0,
            "compression_ratio": 1.0,
        }
    rounds = store.list_rounds()
    stats = store.stats()
    return {
        "client": client_id,
        "rounds": [summarize_round(r) for r in rounds],
        "round_count": len(rounds),
        "latest_round": rounds[-1].round_num if rounds else None,
        "file_bytes": stats.file_bytes,
        "stored_bytes": stats.stored_bytes,
        "db_bytes": stats.db_file_bytes,
        "chunks": stats.chunks,
        "dedup_ratio": round(stats.dedup_ratio, 3),
        "compression_ratio": round(stats.compression_ratio, 3),
    }


def summarize_verify(client_id: str, report: VerifyReport | None) -> dict[str, object]:
    """One client's verify report; ``report`` None is a client with nothing stored to check."""
    if report is None:
        return {
            "client": client_id,
            "ok": True,
            "rounds_checked": 0,
            "chunks_checked": 0,
            "problems": [],
        }
    return {
        "client": client_id,
        "ok": report.ok,
        "rounds_checked": report.rounds_checked,
        "chunks_checked": report.chunks_checked,
        "problems": [p.to_dict() for p in report.problems],
    }


def summarize_prune(client_id: str, result: PruneResult) -> dict[str, object]:
    return {
        "client": client_id,
        "dry_run": result.dry_run,
        "rounds_removed": list(result.plan.remove),
        "rounds_kept": list(result.plan.keep),
        "rounds_held": list(result.plan.held),
        "chunks_removed": result.chunks_removed,
        "bytes_removed": result.bytes_removed,
        "bytes_returned": result.bytes_returned,
    }


def summarize_ingest(client_id: str, result: IngestResult) -> dict[str, object]:
    """The ``checkpoint.ingested`` fields (the engine's own), with the client and the outcome."""
    return {"client": client_id, "outcome": result.outcome, **result.log_fields()}
