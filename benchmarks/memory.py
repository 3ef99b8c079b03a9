"""Peak anonymous memory of a process, sampled from ``/proc/<pid>/status``.

Why sample instead of reading one number at the end: ``VmHWM`` and ``ru_maxrss`` are peaks of
*resident* memory, which counts the page-cache pages of files the process maps (SQLite, shared
libraries). chunkd's promise is about the memory it allocates, which is ``RssAnon``; the kernel
keeps no high-water mark for it, so a thread reads it every 10 ms and keeps the maximum. A
spike shorter than 10 ms can be missed; allocations here are MiB-sized buffers that live for the
length of a chunk (milliseconds) or longer, so the sampled peak is within one chunk of the truth.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

SAMPLE_INTERVAL_S = 0.010


def read_status_kib(pid: int | str = "self") -> dict[str, int]:
    """The ``kB`` fields of ``/proc/<pid>/status`` (``RssAnon``, ``VmHWM``, ``VmRSS``, ...)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields = rest.split()
                if len(fields) == 2 and fields[1] == "kB":
                    out[key] = int(fields[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def read_cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (``/proc/<pid>/stat`` fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces; everything after its closing paren splits.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


class PeakSampler:
    """Keeps the highest ``RssAnon`` of ``pid`` seen while running; a context manager.

    ``mark()`` starts a new window so one long-lived sampler (the daemon's) can attribute peaks
    to successive operations: ``window_peak_kib`` is the maximum since the last mark.
    """

    def __init__(self, pid: int | str = "self", interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.baseline_kib = read_status_kib(pid).get("RssAnon", 0)
        self.peak_kib = self.baseline_kib
        self.window_peak_kib = self.baseline_kib
        self.samples = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> int:
        value = read_status_kib(self.pid).get("RssAnon", 0)
        with self._lock:
            self.samples += 1
            self.peak_kib = max(self.peak_kib, value)
            self.window_peak_kib = max(self.window_peak_kib, value)
        return value

    def mark(self) -> None:
        with self._lock:
            self.window_peak_kib = read_status_kib(self.pid).get("RssAnon", 0)

    def start(self) -> PeakSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> PeakSampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_for(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.01) -> bool:
    """Poll ``predicate()`` until true or ``timeout_s``; the daemon's log has no push channel."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()
