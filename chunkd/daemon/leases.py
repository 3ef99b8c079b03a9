"""Round pins held by restores, so that retention never removes a round under a reader.

A restore takes a lease on ``(client, round)`` for as long as it reads; the client's lane plans
retention (and ``forget``) inside :meth:`LeaseTable.deleting`, which hands it the rounds leased
now and makes a new lease of that client wait until the planned rows are deleted. Without that
gate a restore could take its lease after the plan was made and lose its round mid-read. The gate
spans one plan and one delete transaction (milliseconds), never garbage collection or the return
of free pages. Shared by the server's connection threads and the lanes, hence the lock; it is held
only for a dictionary update, never across I/O.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class LeaseTable:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._counts: Counter[tuple[str, int]] = Counter()
        self._deleting: set[str] = set()

    @contextmanager
    def hold(self, client_id: str, round_num: int) -> Iterator[None]:
        key = (client_id, round_num)
        with self._lock:
            self._lock.wait_for(lambda: client_id not in self._deleting)
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
            return self._leased(client_id)

    def _leased(self, client_id: str) -> frozenset[int]:
        return frozenset(r for (c, r), n in self._counts.items() if c == client_id and n > 0)

    @contextmanager
    def deleting(self, client_id: str) -> Iterator[frozenset[int]]:
        """The rounds leased now; no new lease of ``client_id`` starts until the block ends."""
        with self._lock:
            self._lock.wait_for(lambda: client_id not in self._deleting)
            self._deleting.add(client_id)
            leased = self._leased(client_id)
        try:
            yield leased
        finally:
            with self._lock:
                self._deleting.discard(client_id)
                self._lock.notify_all()

    def any_held(self, client_id: str) -> bool:
        return bool(self.leased(client_id))
