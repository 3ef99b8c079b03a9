"""Round pins held by restores, so that retention never removes a round under a reader.

A restore takes a lease on ``(client, round)`` for as long as it reads; the client's lane asks
:meth:`LeaseTable.leased` before pruning and skips those rounds (and orphan removal) this time.
Shared by the server's connection threads and the lanes, hence the lock; it is held only for a
dictionary update, never across I/O.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class LeaseTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, int]] = Counter()

    @contextmanager
    def hold(self, client_id: str, round_num: int) -> Iterator[None]:
        key = (client_id, round_num)
        with self._lock:
            self._counts[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._counts[key] -= 1
                if self._counts[key] <= 0:
                    del self._counts[key]

    def leased(self, client_id: str) -> frozenset[int]:
        with self._lock:
            return frozenset(r for (c, r), n in self._counts.items() if c == client_id and n > 0)

    def any_held(self, client_id: str) -> bool:
        return bool(self.leased(client_id))
