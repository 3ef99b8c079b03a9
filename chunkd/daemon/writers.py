"""The writer pool: a few threads run the client lanes that have work, one slice at a time.

Issue 20: one thread per client (10,000 clients: 10,000 threads, each waking every second) cost
what the number of directories said, not what the work did. Now:

* **A bounded pool** of :data:`WRITERS` threads takes lanes from one FIFO run queue. A lane is
  *scheduled* (queued or running) at most once, a flag guarded by the pool's lock, so at most
  one writer runs a lane at a time and a client's writes stay serialized, in the order they were
  offered. A writer runs a lane for one slice (:meth:`Runnable.run_slice`: at least one item,
  then until :data:`chunkd.daemon.lanes.SLICE_S` has passed) and puts it back at the tail while
  it still has work: every lane with work gets a slice before any gets a second.
* **One timer**: settle deadlines and retry backoffs are one heap of ``(deadline, lane)``. A
  writer with nothing to run waits on the pool's condition until the earliest deadline, then
  schedules the lanes that are due. With no work and no deadline the writers block with no
  timeout: an idle daemon costs nothing per client.
* **Liveness** in O(writers): each writer records the lane it runs and when its slice began;
  :meth:`WriterPool.healthy` is False when a writer's thread died, or its slice has made no
  progress (``stats.last_progress``, moved by every item and every chunk an ingest stores) for
  the stall limit. An idle writer is healthy.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import os
import threading
import time
from collections import deque
from typing import Protocol

import structlog

from chunkd import log
from chunkd.daemon.outcomes import LaneStats

#: Writer threads. Small checkpoints spend most of an ingest in fsync (the kernel, not a core),
#: so twice the cores keeps both busy while others wait on the disk; more would add memory
#: (each ingest holds a batch of chunks and a page cache) and contention on the hashing pool
#: without adding throughput. At least 4, so that a few long ingests do not hold up every
#: other client; at most 8 (the thread budget of issue 20 is 64 for the whole daemon).
WRITERS = max(4, min(8, 2 * (os.cpu_count() or 2)))


class Runnable(Protocol):
    """What the pool needs of a lane (:class:`chunkd.daemon.lanes.ClientLane`)."""

    client_id: str
    stats: LaneStats
    #: queued or running; read and written under the pool's lock only
    scheduled: bool
    #: the earliest deadline of this lane in the pool's heap (pool's lock only)
    timer_at: float | None

    def run_slice(self) -> float | None:
        """Do some of the lane's work; the next deadline of what is left, or None."""
        ...

    def has_work(self) -> bool:
        """Work that can be done now (queued items, or a deadline already passed)."""
        ...

    def end_slice(self) -> None:
        """The slice is over (on the writer, outside the pool's lock): unpin the store."""
        ...


class WriterPool:
    """The run queue, the timer heap and the writer threads."""

    def __init__(self, writers: int = WRITERS) -> None:
        self._cond = threading.Condition()
        self._ready: deque[Runnable] = deque()
        self._timers: list[tuple[float, int, Runnable]] = []
        self._seq = itertools.count()
        self._stopping = False
        #: per writer: (the lane it runs, when the slice began), or None while it waits
        self._running: list[tuple[Runnable, float] | None] = [None] * writers
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"chunkd-writer-{i}", daemon=True)
            for i in range(writers)
        ]
        #: slices run so far: moves only when some lane had work
        self.slices = 0
        self._log = structlog.get_logger("chunkd.writers")

    @property
    def size(self) -> int:
        return len(self._threads)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def schedule(self, lane: Runnable) -> None:
        """The lane has work: queue it unless it is queued or running already (then the writer
        running it sees the work when the slice ends). Never blocks on the lane."""
        with self._cond:
            if lane.scheduled or self._stopping:
                return
            lane.scheduled = True
            self._ready.append(lane)
            self._cond.notify()

    def wake_at(self, lane: Runnable, deadline: float) -> None:
        """Schedule the lane at ``deadline`` (monotonic), unless it is due earlier already."""
        with self._cond:
            self._add_timer_locked(lane, deadline)

    @property
    def runnable(self) -> int:
        """Lanes queued or running now."""
        with self._cond:
            return len(self._ready) + sum(r is not None for r in self._running)

    def healthy(self, stall_s: float) -> bool:
        """Every writer is alive, and none has run a slice without progress for ``stall_s``."""
        now = time.monotonic()
        with self._cond:
            running = list(self._running)
        if not all(t.is_alive() for t in self._threads):
            return False
        for slot in running:
            if slot is None:
                continue
            lane, began = slot
            stats = lane.stats
            if now - max(began, stats.busy_since or began, stats.last_progress) >= stall_s:
                return False
        return True

    def stop(self, timeout_s: float = 60.0) -> None:
        """Let every writer finish its slice, then end the threads (queued lanes stay queued)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    # -- the writers -----------------------------------------------------------------------------
    def _work(self, index: int) -> None:
        name_os_thread(f"chunkd-writer{index}")
        while True:
            lane = self._next(index)
            if lane is None:
                return
            deadline: float | None = None
            try:
                deadline = lane.run_slice()
            except Exception as e:  # the pool's boundary (a lane has its own): keep the writer
                self._log.exception(log.INGEST_FAILED, client=lane.client_id, error=str(e))
            finally:
                lane.end_slice()
            with self._cond:
                self._running[index] = None
                self.slices += 1
                if lane.has_work() and not self._stopping:
                    self._ready.append(lane)  # stays scheduled: to the tail, behind the others
                else:
                    lane.scheduled = False
                if deadline is not None:
                    self._add_timer_locked(lane, deadline)

    def _next(self, index: int) -> Runnable | None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                self._fire_timers_locked(now)
                if self._ready:
                    lane = self._ready.popleft()
                    self._running[index] = (lane, now)
                    return lane
                timeout = self._timers[0][0] - now if self._timers else None
                self._cond.wait(timeout)
            return None

    def _add_timer_locked(self, lane: Runnable, deadline: float) -> None:
        if lane.timer_at is not None and lane.timer_at <= deadline:
            return  # an earlier wake-up is due; that slice sets the next one
        lane.timer_at = deadline
        first = not self._timers or deadline < self._timers[0][0]
        heapq.heappush(self._timers, (deadline, next(self._seq), lane))
        if first:
            self._cond.notify()  # a waiting writer recomputes how long to wait

    def _fire_timers_locked(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            deadline, _, lane = heapq.heappop(self._timers)
            if lane.timer_at == deadline:
                lane.timer_at = None
            if not lane.scheduled:
                lane.scheduled = True
                self._ready.append(lane)


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the kernel too (``top -H``, ``/proc/PID/task/*/comm``:
    at most 15 bytes); best effort, Linux only."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        return
