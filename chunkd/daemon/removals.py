"""Client directories that disappear while the daemon watches them (issue 17, finding 6).

Under the default ``db_path`` a client's database lives in its directory, so ``rm -rf
client_3`` deletes its whole history. That must never pass in silence: the daemon logs
``client.removed`` at warning level with the rounds the database held (its lane kept them,
:class:`~chunkd.daemon.state.HeldRounds`, since the file cannot be asked afterwards), ``status``
shows the removal for as long as the daemon runs, and ``list`` shows the client as removed while
its directory is gone (not as a client with nothing stored).

The watcher reports a deleted or moved-away directory; the daemon's main thread checks that the
directory is really gone before calling :meth:`ClientRemovals.note`, and every reconciliation
scan checks every client, so a missed event (polling, a network filesystem) is caught there.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from chunkd import log
from chunkd.daemon.outcomes import utc_now_iso
from chunkd.daemon.state import HeldRounds, RemovedClient

#: A ``client.removed`` line names at most this many round numbers (``round_count`` is exact).
MAX_ROUNDS_LOGGED = 1000


class ClientRemovals:
    """The daemon's table of removed clients; any thread reads it, the main thread writes it."""

    def __init__(self, logger: Any) -> None:
        self._log = logger
        self._lock = threading.Lock()
        self._by_client: dict[str, RemovedClient] = {}

    def note(
        self, client_id: str, directory: Path, db_path: Path, held: HeldRounds
    ) -> RemovedClient | None:
        """Record and log a removal; None if this one was recorded already."""
        with self._lock:
            known = self._by_client.get(client_id)
            if known is not None and known.returned_at is None:
                return None
            removed = RemovedClient(
                client_id,
                directory,
                db_path,
                held,
                db_deleted=not db_path.exists(),
                removed_at=utc_now_iso(),
            )
            self._by_client[client_id] = removed
        self._log.warning(
            log.CLIENT_REMOVED,
            client=client_id,
            dir=str(directory),
            db=str(db_path),
            db_deleted=removed.db_deleted,
            rounds=list(held.rounds[-MAX_ROUNDS_LOGGED:]),
            round_count=len(held.rounds),
            generations=held.generations,
            hint=removal_hint(removed),
        )
        return removed

    def returned(self, client_id: str) -> None:
        """The directory is there again; the removal stays in ``status``, not in ``list``."""
        with self._lock:
            known = self._by_client.get(client_id)
            if known is not None and known.returned_at is None:
                self._by_client[client_id] = RemovedClient(
                    known.client_id,
                    known.directory,
                    known.db_path,
                    known.held,
                    known.db_deleted,
                    known.removed_at,
                    returned_at=utc_now_iso(),
                )

    def snapshot(self) -> dict[str, RemovedClient]:
        with self._lock:
            return dict(self._by_client)


def removal_hint(removed: RemovedClient) -> str:
    """What the removal cost, in a sentence for the log and ``status``."""
    count = len(removed.held.rounds)
    if not removed.db_deleted:
        return f"the database is kept at {removed.db_path}: its {count} round(s) stay restorable"
    if not count and not removed.held.generations:
        return "the database went with the directory; it held no rounds"
    return (
        f"the database was inside the directory and went with it: {count} round(s) and "
        f"{removed.held.generations} earlier generation(s) are gone (unless a replica holds "
        "them); put db_path outside watch_root to keep history when output trees are deleted"
    )
