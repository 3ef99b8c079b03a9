"""Retention plans and deletes inside the lease gate (issue 17: a round is never removed under
a reader that took its lease after retention's plan was made)."""

from __future__ import annotations

import contextlib
import threading
import time

from chunkd.daemon.leases import LeaseTable
from chunkd.prune import prune_store
from chunkd.store import ChunkStore
from tests.engine.test_order import take, write


def test_a_new_lease_waits_while_retention_deletes():
    table = LeaseTable()
    got: list[str] = []

    def restore(client: str) -> None:
        with table.hold(client, 3):
            got.append(client)

    with table.deleting("1") as leased:
        assert leased == frozenset()
        same = threading.Thread(target=restore, args=("1",))
        other = threading.Thread(target=restore, args=("2",))
        same.start()
        other.start()
        other.join(5)
        time.sleep(0.2)
        assert got == ["2"], "a lease of the client being pruned started inside the gate"
    same.join(5)
    assert got == ["2", "1"]


def test_retention_sees_the_leases_held_when_it_plans(tmp_path, db_path):
    table = LeaseTable()
    with ChunkStore.open_writer(db_path) as store:
        for r in range(1, 6):
            take(store, write(tmp_path, r, r, r)[0], 0)
        seen_at_exit: list[list[int]] = []

        @contextlib.contextmanager
        def gate():
            with table.deleting("1") as leased:
                yield leased
                seen_at_exit.append(store.round_numbers())

        with table.hold("1", 2):
            result = prune_store(store, 2, lease_gate=gate)
        assert result.plan.held == (2,)
        assert seen_at_exit == [[2, 4, 5]]  # deleted before the gate let new leases in
