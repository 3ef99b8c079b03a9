"""``checkpoint.progress``: what a long ingest says between ``detected`` and ``ingested``.

Issue 10, item 8: a 768 MiB checkpoint took 8 s with nothing in the log. :class:`IngestProgress`
is the ``progress(bytes_done, bytes_total)`` callback that :func:`chunkd.ingest.ingest_file`
calls after each chunk; it logs one ``checkpoint.progress`` line (``path``, ``bytes_done``,
``bytes_total``, ``percent``, ``mb_per_s``, ``eta_s``) at most every :data:`INTERVAL_S`, and
none at all for a file that is done sooner, so small checkpoints add no lines. It also keeps
the figures of every ingest under way for ``chunkd status`` (:func:`in_progress`), which is how
``chunkd ingest`` through the daemon draws its bar. :func:`verifying` does the same for the
verifies under way (issue 21: ``chunkd verify`` through the daemon sat at 0% until done).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from chunkd import log

#: Seconds between two progress lines of one file, and before the first.
INTERVAL_S: Final = 2.0
#: An entry of :func:`in_progress` not updated for this long belongs to an ingest that failed.
STALE_S: Final = 30.0

#: path -> (bytes_done, bytes_total, monotonic time of the update): the ingests under way, for
#: ``chunkd status`` (``ingesting``) and so for ``chunkd ingest``'s progress bar.
_CURRENT: dict[str, tuple[int, int, float]] = {}
_CURRENT_LOCK = threading.Lock()


def in_progress() -> list[dict[str, object]]:
    """The files being ingested now, with how far each has got."""
    now = time.monotonic()
    with _CURRENT_LOCK:
        for path in [p for p, (_, _, at) in _CURRENT.items() if now - at > STALE_S]:
            del _CURRENT[path]
        items = sorted(_CURRENT.items())
    return [{"path": p, "bytes_done": d, "bytes_total": t} for p, (d, t, _) in items]


#: client id -> [chunks and rounds checked, their total]: the verifies under way.
_VERIFYING: dict[str, list[int]] = {}


def verifying() -> list[dict[str, object]]:
    """The clients being verified now, with how far each has got (``status``'s ``verifying``)."""
    with _CURRENT_LOCK:
        items = sorted((cid, done, total) for cid, (done, total) in _VERIFYING.items())
    return [{"client": cid, "done": done, "total": total} for cid, done, total in items]


@contextlib.contextmanager
def verify_progress(client_id: str, total: int) -> Iterator[Callable[[], None]]:
    """While a verify of ``client_id`` runs: the ``step`` it calls per chunk and per round."""
    figures = [0, total]

    def step() -> None:
        figures[0] += 1  # one writer (this verify); readers copy under the lock

    with _CURRENT_LOCK:
        _VERIFYING[client_id] = figures
    try:
        yield step
    finally:
        with _CURRENT_LOCK:
            if _VERIFYING.get(client_id) is figures:
                del _VERIFYING[client_id]


class IngestProgress:
    """The progress callback of one ingest; cheap when it does not log (one clock read)."""

    __slots__ = ("_last", "_logger", "_path", "_started")

    def __init__(self, logger: Any, path: Path | str) -> None:
        self._logger = logger
        self._path = str(path)
        self._started = time.monotonic()
        self._last = self._started

    def __call__(self, bytes_done: int, bytes_total: int) -> None:
        now = time.monotonic()
        with _CURRENT_LOCK:
            if bytes_done >= bytes_total:
                _CURRENT.pop(self._path, None)
            else:
                _CURRENT[self._path] = (bytes_done, bytes_total, now)
        if now - self._last < INTERVAL_S or bytes_done >= bytes_total:
            return
        self._last = now
        elapsed = now - self._started
        rate = bytes_done / elapsed if elapsed > 0 else 0.0
        self._logger.info(
            log.CHECKPOINT_PROGRESS,
            path=self._path,
            bytes_done=bytes_done,
            bytes_total=bytes_total,
            percent=round(100 * bytes_done / bytes_total, 1) if bytes_total else None,
            mb_per_s=round(rate / 1e6, 1),
            eta_s=round((bytes_total - bytes_done) / rate, 1) if rate > 0 else None,
        )
