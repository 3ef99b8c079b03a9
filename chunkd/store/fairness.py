"""Restores before batch commits: a per-database gate inside one process.

A batch commit holds SQLite's EXCLUSIVE lock while it writes and fsyncs its pages; a reader that
meets it waits, and a restore reads one chunk per short transaction, so with commits every few
tens of milliseconds it meets one at almost every chunk (measured: a 128 MiB restore took 8x its
idle time beside a 768 MiB ingest). Restores are interactive and ingest is background work, so
in the daemon, where both run in one process, the writer defers each batch commit while a restore
of the same database is running, for at most ``MAX_DEFER_S``, then commits once and looks again.

Bound (docs/DESIGN.md "Readers are never starved"): a restore meets at most one batch commit per
``MAX_DEFER_S``; ingest goes on at one batch per ``MAX_DEFER_S`` at least while restores run. A
process that does not share the gate (an offline ``chunkd restore --db`` beside a daemon) relies on
SQLite's busy handler instead: at most one batch commit per chunk read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: The longest a batch commit waits for restores of its database.
MAX_DEFER_S = 0.5


class FairnessGate:
    """Counts the restores reading one database; lets its writer wait for them (bounded)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    def before_commit(self, max_defer_s: float | None = None) -> float:
        """Wait while restores run, at most ``max_defer_s`` (default ``MAX_DEFER_S``); returns
        the seconds waited."""
        started = time.monotonic()
        deadline = started + (MAX_DEFER_S if max_defer_s is None else max_defer_s)
        with self._cond:
            while self._readers:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        return time.monotonic() - started


_GATES: dict[tuple[int, int], FairnessGate] = {}
_GATES_LOCK = threading.Lock()


def gate_for(file_id: tuple[int, int] | None) -> FairnessGate:
    """The process's gate of the database with this ``(st_dev, st_ino)`` (a private one if the
    file is not known)."""
    if file_id is None:
        return FairnessGate()
    with _GATES_LOCK:
        gate = _GATES.get(file_id)
        if gate is None:
            gate = _GATES[file_id] = FairnessGate()
        return gate
