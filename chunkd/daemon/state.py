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
from pathlib import Path
from typing import Protocol

from chunkd.config import Settings
from chunkd.daemon.leases import LeaseTable
from chunkd.ingest import IngestResult
from chunkd.prune import PruneResult


@dataclass(frozen=True, slots=True)
class ClientInfo:
    client_id: str
    directory: Path
    db_path: Path


class DaemonState(Protocol):
    settings: Settings
    leases: LeaseTable

    def clients(self) -> Mapping[str, ClientInfo]:
        """Every client being watched, by id (a snapshot)."""
        ...

    def status(self) -> dict[str, object]:
        """Health: uptime_s, clients, queue_depth, last_ingest, errors, version, pid, ..."""
        ...

    def submit_ingest(
        self, client_id: str, path: Path, round_num: int | None
    ) -> Future[IngestResult]:
        """Queue ``path`` on the client's lane now (no settle delay); BusyError if queue is full."""
        ...

    def submit_prune(self, client_id: str, dry_run: bool) -> Future[PruneResult]:
        """Run retention on the client's lane; BusyError if the queue is full or stopping."""
        ...
