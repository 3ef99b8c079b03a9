"""What the main thread tells systemd each tick: ``WATCHDOG=1`` while ingest is alive, and now
and then a ``STATUS=`` line.

Liveness is the writer pool's, in O(writers): ``WATCHDOG=1`` only while every writer thread
lives and none has run a slice without progress for :data:`STALL_S`, so systemd restarts a
daemon whose ingest is stuck rather than one that is merely idle. The ``STATUS=`` line costs
O(clients), so it is written only after the writers ran, and at most every
:data:`STATUS_EVERY_S`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from chunkd.daemon import sdnotify
from chunkd.daemon.lanes import ClientLane
from chunkd.daemon.writers import WriterPool

#: A writer whose slice made no progress (no item handled, no chunk stored) for this long is
#: considered stuck (no WATCHDOG=1 then); a long ingest that keeps storing chunks is not.
STALL_S = 900.0
#: The ``STATUS=`` line is refreshed at most this often, and only after the writers ran.
STATUS_EVERY_S = 5.0


class Heartbeat:
    """Called by the main thread once a tick (:meth:`beat`)."""

    def __init__(
        self,
        notifier: sdnotify.Notifier,
        writers: WriterPool,
        lanes: Callable[[], Sequence[ClientLane]],
    ) -> None:
        self._notifier = notifier
        self._writers = writers
        self._lanes = lanes
        self._status_line: tuple[float, int] = (0.0, -1)  # when, at which writers.slices

    def beat(self) -> None:
        if self._writers.healthy(STALL_S):
            self._notifier.notify("WATCHDOG=1")
        now = time.monotonic()
        at, slices = self._status_line
        if self._writers.slices == slices or now - at < STATUS_EVERY_S:
            return
        self._status_line = (now, self._writers.slices)
        lanes = self._lanes()
        ingested = sum(lane.stats.ingested for lane in lanes)
        self._notifier.notify(
            f"STATUS=watching {len(lanes)} clients, {ingested} ingested, "
            f"{self._writers.runnable} with work"
        )
