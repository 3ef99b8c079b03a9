"""Engine results as JSON-ready dicts: the ``result`` objects of the socket answers.

The daemon's handlers and the CLI's offline ``--db`` forms both build their output here, so
``chunkd list --json`` prints the same document whether it asked the daemon or read a database
itself, and the CLI renders both with one function. Keys are docs/SPEC.md "Logs" ones (``client``,
``round``);
sizes are bytes; ratios are plain floats, never NaN or infinity (those are not JSON).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import sqlite3
import stat
from collections.abc import Sequence
from pathlib import Path

from chunkd.errors import BusyError, ChunkdError, ForbiddenError
from chunkd.forget import ForgetResult
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
        "generation": info.generation,
        "source": info.source_path,
    }


def summarize_store(
    client_id: str,
    store: ChunkStore | None,
    *,
    client_dir: Path | None = None,
    file_patterns: Sequence[str] = (),
) -> dict[str, object]:
    """One client's rounds and space figures; ``store`` None is a client with no database yet.

    Space is reported as the disk sees it (issue 10, item 2): ``db_bytes`` is the database file
    and its journal/WAL on disk, ``disk_ratio`` the checkpoints' bytes over it. That ratio is
    split into ``dedup_ratio`` (tensor bytes referenced by rounds over the distinct bytes kept)
    and ``compression_ratio`` (the rest: compression, deltas and the database's own overhead),
    so that each is at least 1 and their product is ``disk_ratio`` whenever the database is
    smaller than the checkpoints (otherwise both are 1 and ``disk_ratio`` is below 1). With
    ``client_dir``, ``files_on_disk`` counts the checkpoint files (``file_patterns``) still in it,
    which chunkd leaves there unless ``delete_after_ingest``.
    """
    on_disk = checkpoints_on_disk(client_dir, file_patterns)
    return {**summarize_database(client_id, store), **on_disk}


def summarize_database(client_id: str, store: ChunkStore | None) -> dict[str, object]:
    """:func:`summarize_store` without ``files_on_disk``: only what the database holds.

    Everything here changes only when the database file does, which is what lets the daemon
    keep it between two ``list`` requests (:mod:`chunkd.daemon.summaries`); the checkpoint files
    beside it are counted afresh each time.
    """
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
            **_NO_GENERATIONS,
            "disk_ratio": None,
            "dedup_ratio": 1.0,
            "compression_ratio": 1.0,
        }
    # newest last, in the one order retention and `latest` use (run, then round number)
    rounds = sorted(store.list_rounds(), key=lambda v: v.order_key)
    stats = store.stats()
    db_bytes = _db_bytes_on_disk(store.path, stats.db_file_bytes)
    disk_ratio = stats.file_bytes / db_bytes if db_bytes and stats.file_bytes else None
    dedup = max(1.0, stats.dedup_ratio)
    if disk_ratio is not None:
        dedup = min(dedup, max(1.0, disk_ratio))
        # Below 1 only when the database outgrew the checkpoints (a tiny model's page overhead):
        # then no split into savings exists, both stay 1 and disk_ratio says the truth.
        compression = max(1.0, disk_ratio / dedup)
    else:
        compression = 1.0
    return {
        "client": client_id,
        "rounds": [summarize_round(r) for r in rounds],
        "round_count": len(rounds),
        # earlier versions of rewritten rounds, restorable with ``restore --generation``
        "generations": [summarize_round(v) for v in store.list_versions() if not v.current],
        "latest_round": store.latest_round() if rounds else None,
        "file_bytes": stats.file_bytes,
        "stored_bytes": stats.stored_bytes,
        "db_bytes": db_bytes,
        "chunks": stats.chunks,
        # what rewritten rounds' earlier versions cost (docs/SPEC.md, "Rounds": at most N are kept)
        "generation_count": stats.generations,
        "generation_file_bytes": stats.generation_file_bytes,
        "generation_stored_bytes": stats.generation_stored_bytes,
        "disk_ratio": None if disk_ratio is None else round(disk_ratio, 3),
        "dedup_ratio": round(dedup, 3),
        "compression_ratio": round(compression, 3),
    }


_NO_GENERATIONS: dict[str, object] = {
    "generation_count": 0,
    "generation_file_bytes": 0,
    "generation_stored_bytes": 0,
}


def summarize_unreadable(client_id: str, db_path: Path, error: BaseException) -> dict[str, object]:
    """The ``list`` entry of a client whose database cannot be read: the figures of an empty
    client, an ``error`` (code, message) and, when the file itself is at fault, ``damaged``
    with the reason (issue 17, finding 6: a damaged database is never shown as an empty client).

    Damaged: not a SQLite database, malformed, a newer format, no chunkd schema, an I/O error.
    Not damaged: busy (another process holds a lock; try again) or not permitted.
    """
    message = f"database {db_path} cannot be read: {type(error).__name__}: {error}"
    damaged = is_damage(error)
    if damaged:
        code = "integrity"
    elif isinstance(error, ChunkdError):
        code = error.code
    else:
        code = "internal"
    entry = {**summarize_store(client_id, None), "error": {"code": code, "message": message}}
    if damaged:
        entry["damaged"] = {"reason": str(error) or type(error).__name__}
    return entry


def is_damage(error: BaseException) -> bool:
    """Whether an error opening or reading a database means the file is damaged."""
    if isinstance(error, (BusyError, ForbiddenError, PermissionError)):
        return False
    if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
        return False
    return isinstance(error, (ChunkdError, sqlite3.DatabaseError, OSError))


def _db_bytes_on_disk(path: Path, db_file_bytes: int) -> int:
    """The database file plus whatever journal or WAL sits beside it now."""
    total = db_file_bytes
    for suffix in ("-journal", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


def checkpoints_on_disk(client_dir: Path | None, file_patterns: Sequence[str]) -> dict[str, object]:
    """``files_on_disk`` / ``files_on_disk_bytes``: checkpoint files still in the client's
    directory (None when the directory is not known here).

    One ``scandir`` per directory and one ``lstat`` per matching file (a file being written
    grows without its directory changing, so sizes are never taken from an earlier look).
    """
    if client_dir is None or not file_patterns:
        return {"files_on_disk": None, "files_on_disk_bytes": None}
    count = size = 0
    pending = [os.fspath(client_dir)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith("."):
                        continue
                    with contextlib.suppress(OSError):
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        elif any(fnmatch.fnmatch(name, p) for p in file_patterns):
                            st = entry.stat(follow_symlinks=False)
                            if stat.S_ISREG(st.st_mode):
                                count += 1
                                size += st.st_size
        except OSError:
            continue
    return {"files_on_disk": count, "files_on_disk_bytes": size}


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


def summarize_forget(client_id: str, result: ForgetResult) -> dict[str, object]:
    return {"client": client_id, **result.log_fields()}


def summarize_ingest(client_id: str, result: IngestResult) -> dict[str, object]:
    """The ``checkpoint.ingested`` fields (the engine's own), with the client and the outcome."""
    return {"client": client_id, "outcome": result.outcome, **result.log_fields()}
