"""``checkpoint.progress``: what a long ingest says between ``detected`` and ``ingested``.

Issue 10, item 8: a 768 MiB checkpoint took 8 s with nothing in the log. :class:`IngestProgress`
is the ``progress(bytes_done, bytes_total)`` callback that :func:`chunkd.ingest.ingest_file`
calls after each chunk; it logs one ``checkpoint.progress`` line (``path``, ``bytes_done``,
``bytes_total``, ``percent``, ``mb_per_s``, ``eta_s``) at most every :data:`INTERVAL_S`, and
none at all for a file that is done sooner, so small checkpoints add no lines.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

from chunkd import log

#: Seconds between two progress lines of one file, and before the first.
INTERVAL_S: Final = 2.0


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
