"""``list``: every readable client's summary, from the cache while its database is unchanged.

Split from ``handlers.py``. At 10,000 clients ``list`` must answer in seconds (issue 20), so it
opens only the databases that changed since the last ``list`` (:mod:`chunkd.daemon.summaries`);
the checkpoint files beside them are counted afresh every time (a file grows without anything
else changing). What the answer holds is what it always held (:func:`chunkd.summary.
summarize_store`, the same document as ``chunkd list --db``).

A database that cannot be read is reported in place and remembered in :data:`DAMAGED`, which
``status`` counts, so one damaged file never hides every other client.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import Final

from chunkd import log
from chunkd.daemon.state import ClientInfo, DaemonState, RemovedClient
from chunkd.daemon.summaries import SummaryCache
from chunkd.errors import ChunkdError, NotFoundError
from chunkd.store import ChunkStore
from chunkd.summary import (
    checkpoints_on_disk,
    summarize_database,
    summarize_store,
    summarize_unreadable,
)

_log = log.get_logger("chunkd.daemon.handlers")


class DamagedDatabases:
    """Clients whose database a read request could not open or read, until one succeeds again.

    ``list`` answers for every healthy client and reports a damaged one in place; this table is
    what ``status`` adds to its ``errors`` count, so the damage shows in health checks too.
    Any request thread writes it; the lock guards the dict.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_client: dict[str, str] = {}

    def mark(self, client_id: str, message: str) -> None:
        with self._lock:
            self._by_client[client_id] = message

    def clear(self, client_id: str) -> None:
        with self._lock:
            self._by_client.pop(client_id, None)

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self._by_client)


#: The daemon's tables (one daemon per process).
DAMAGED: Final = DamagedDatabases()
SUMMARIES: Final = SummaryCache()


def has_database(info: ClientInfo) -> bool:
    """Whether the client has a database with a schema yet.

    SQLite creates the file empty when the first writer connects and writes it only when the
    schema commits; ``open_reader`` calls an empty file "schema version 0" (an internal error),
    so a ``list`` during a new client's first ingest would fail for every client. Empty is
    "nothing stored yet".
    """
    try:
        return info.db_path.stat().st_size > 0
    except FileNotFoundError:
        return False


def open_store_if_any(info: ClientInfo) -> ChunkStore | None:
    """A reader, or None for a client whose first checkpoint has not been ingested yet.

    That includes a database whose schema never committed (its writer was killed while creating
    it: ``open_reader`` finds schema version 0, "holds no rounds yet"): nothing was stored, and
    nothing is damaged; the next writer creates the schema (a lifecycle campaign found ``list``
    calling such a client damaged after a ``kill -9`` during its first ingest)."""
    if not has_database(info):
        return None
    try:
        return ChunkStore.open_reader(info.db_path)
    except NotFoundError:
        return None


def list_clients(state: DaemonState, selected: list[ClientInfo]) -> dict[str, object]:
    """The ``list`` answer for ``selected`` (clients the peer may read, in order)."""
    SUMMARIES.retain(state.clients().keys())
    removed = _still_removed(state)
    patterns = state.settings.file_patterns
    return {
        "clients": [
            _summary_or_error(info, removed.get(info.client_id), patterns) for info in selected
        ]
    }


def _summary_or_error(
    info: ClientInfo, removed: RemovedClient | None, patterns: Sequence[str]
) -> dict[str, object]:
    """One client's ``list`` entry; a database that cannot be read is reported in place.

    The entry then has the figures of an empty client, an ``error`` object (code, message) and,
    when the file is damaged, ``damaged`` with the reason (:func:`summarize_unreadable`), so one
    damaged file never hides every other client, and never passes for an empty one. A client
    whose directory disappeared carries ``removed`` (what its database held, and whether the
    database went with the directory).
    """
    try:
        entry = SUMMARIES.get(info.client_id, info.db_path, lambda: _read_summary(info))
    except (ChunkdError, sqlite3.Error, OSError) as e:
        if isinstance(e, NotFoundError) and not has_database(info):
            entry = summarize_store(info.client_id, None)  # deleted since we looked
        else:  # a file with no chunkd schema in it is damaged too
            entry = _unreadable(info, e)
    else:
        DAMAGED.clear(info.client_id)
        entry.update(checkpoints_on_disk(info.directory, patterns))
    if removed is not None:
        entry["removed"] = removed.to_dict()
    return entry


def cached_summary(info: ClientInfo) -> dict[str, object] | None:
    """The client's ``list`` figures, read only if its database changed since they were cached;
    None when it cannot be read (``list`` and ``status`` say why)."""
    try:
        return SUMMARIES.get(info.client_id, info.db_path, lambda: _read_summary(info))
    except (ChunkdError, sqlite3.Error, OSError):
        return None


def _read_summary(info: ClientInfo) -> dict[str, object]:
    store = open_store_if_any(info)
    try:
        return summarize_database(info.client_id, store)
    finally:
        if store is not None:
            store.close()


def _unreadable(info: ClientInfo, error: BaseException) -> dict[str, object]:
    entry = summarize_unreadable(info.client_id, info.db_path, error)
    failure = entry["error"]
    assert isinstance(failure, dict)
    DAMAGED.mark(info.client_id, str(failure["message"]))
    _log.error(
        log.REQUEST_FAILED,
        client=info.client_id,
        error_code=failure["code"],
        error=failure["message"],
    )
    return entry


def _still_removed(state: DaemonState) -> dict[str, RemovedClient]:
    """Removed clients whose directory is still gone (``list`` shows them as removed)."""
    return {
        cid: removed
        for cid, removed in state.removed_clients().items()
        if removed.returned_at is None and not removed.directory.is_dir()
    }
