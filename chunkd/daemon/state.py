"""What the socket handlers may ask of the running daemon: the interface between the two halves.

``handlers.py`` sees the daemon only through :class:`DaemonState`; ``service.py`` implements it.
Reads (list, restore, verify, export) open their own read-only stores and never wait on a lane;
writes (ingest, prune) are handed to the client's lane, the database's only writer, and come back
as futures.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from chunkd import log
from chunkd.config import Settings
from chunkd.daemon.leases import LeaseTable
from chunkd.forget import ForgetResult
from chunkd.ingest import IngestResult
from chunkd.prune import PruneResult


@dataclass(frozen=True, slots=True)
class ClientInfo:
    client_id: str
    directory: Path
    db_path: Path


@dataclass(frozen=True, slots=True)
class HeldRounds:
    """What a client's database held at its last change, kept by its lane (issue 17, finding 6).

    The daemon must still know it after the directory, and the database in it, are gone.
    """

    rounds: tuple[int, ...] = ()
    #: earlier generations of rewritten rounds
    generations: int = 0


@dataclass(frozen=True, slots=True)
class RemovedClient:
    """A client whose directory disappeared while the daemon watched it."""

    client_id: str
    directory: Path
    db_path: Path
    held: HeldRounds
    #: the database went with the directory (the default ``db_path`` puts it there)
    db_deleted: bool
    removed_at: str
    #: when the directory was there again (a new, empty history if the database went)
    returned_at: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "dir": str(self.directory),
            "db": str(self.db_path),
            "db_deleted": self.db_deleted,
            "rounds": list(self.held.rounds),
            "round_count": len(self.held.rounds),
            "generations": self.held.generations,
            "removed_at": self.removed_at,
            "returned_at": self.returned_at,
        }


class DaemonState(Protocol):
    settings: Settings
    leases: LeaseTable

    def clients(self) -> Mapping[str, ClientInfo]:
        """Every client being watched, by id (a snapshot)."""
        ...

    def status(self) -> dict[str, object]:
        """Health: uptime_s, clients, queue_depth, last_ingest, errors, version, pid, ..."""
        ...

    def removed_clients(self) -> Mapping[str, RemovedClient]:
        """Clients whose directory disappeared since the daemon started, by id (a snapshot)."""
        ...

    def submit_ingest(
        self, client_id: str, path: Path, round_num: int | None
    ) -> Future[IngestResult]:
        """Queue ``path`` on the client's lane now (no settle delay); BusyError if queue is full."""
        ...

    def submit_forget(
        self, client_id: str, round_num: int, generation: int | None, dry_run: bool
    ) -> Future[ForgetResult]: ...

    def submit_prune(self, client_id: str, dry_run: bool) -> Future[PruneResult]:
        """Run retention on the client's lane; BusyError if the queue is full or stopping."""
        ...


#: Error events that ``chunkd status`` counts; each names a failure on the daemon's side.
ERROR_EVENTS: frozenset[str] = frozenset({log.INGEST_FAILED, log.RETENTION_FAILED})
#: Events that end a file's error: it has since been stored (or found already stored).
_SUCCESS_EVENTS: frozenset[str] = frozenset({log.CHECKPOINT_INGESTED, log.CHECKPOINT_DUPLICATE})


@dataclass(slots=True)
class ErrorLedger:
    """One client's errors as its log reports them, for ``chunkd status`` (issue 10, item 7).

    Fed by :class:`CountingLogger` from the very log calls that write the lines, so the status
    can never say 0 errors while ``ingest.failed`` lines go by. ``last_error`` names the file
    (when there is one) and is cleared once that file, or for an error without a file any file,
    is stored after all. Written by the lane thread, read by status requests: plain values, each
    replaced whole.
    """

    errors: int = 0
    rejected: int = 0
    last_error: dict[str, object] | None = None

    def note(self, event: str, fields: Mapping[str, object]) -> None:
        if event in ERROR_EVENTS or event == log.CHECKPOINT_REJECTED:
            if event == log.CHECKPOINT_REJECTED:
                self.rejected += 1
            else:
                self.errors += 1
            path = fields.get("path")
            self.last_error = {
                "event": event,
                "path": None if path is None else str(path),
                "error": str(fields.get("error", "")),
                "at": datetime.now(timezone.utc)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
            }
        elif event in _SUCCESS_EVENTS and self.last_error is not None:
            failed_path = self.last_error.get("path")
            if failed_path is None or failed_path == str(fields.get("path")):
                self.last_error = None


class CountingLogger:
    """A structlog logger that also tells an :class:`ErrorLedger` what it logs.

    Wraps a lane's bound logger; every method the lanes call (``debug`` ... ``exception``,
    ``bind``) logs exactly as before.
    """

    __slots__ = ("_ledger", "_logger")

    def __init__(self, logger: Any, ledger: ErrorLedger) -> None:
        self._logger = logger
        self._ledger = ledger

    def _log(self, method: str, event: str, fields: dict[str, Any]) -> Any:
        self._ledger.note(event, fields)
        return getattr(self._logger, method)(event, **fields)

    def debug(self, event: str, **fields: Any) -> Any:
        return self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> Any:
        return self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> Any:
        return self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> Any:
        return self._log("error", event, fields)

    def exception(self, event: str, **fields: Any) -> Any:
        return self._log("exception", event, fields)

    def bind(self, **values: Any) -> CountingLogger:
        return CountingLogger(self._logger.bind(**values), self._ledger)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


def _utc_now_iso() -> str:
    """ISO 8601 UTC with a Z, as ``last_ingest.at`` (so the two sort together)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
