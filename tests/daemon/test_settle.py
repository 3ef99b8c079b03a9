"""The settle table's decisions (chunkd.daemon.settle): pure bookkeeping, no files, no clock."""

from __future__ import annotations

from pathlib import Path

from chunkd.daemon.settle import SettleTable
from chunkd.store import FileIdentity

PATH = Path("/fl/client_1/FL_global_model.pt")
V1 = FileIdentity(100, 1_000, 1_000)
V2 = FileIdentity(120, 2_000, 2_000)
V3 = FileIdentity(90, 3_000, 3_000)


def test_each_complete_version_replaced_before_it_was_taken_is_reported_once() -> None:
    table = SettleTable(1.0)
    table.add(PATH, V1, now=0.0, completed=V1)
    lost = table.offer(PATH, V2, now=0.2, completed=V2)
    assert lost is not None and lost.lost == V1 and lost.by == V2
    lost = table.offer(PATH, V3, now=0.4, completed=V3)
    assert lost is not None and lost.lost == V2
    assert table.due(1.3) == [] and table.due(1.4) == [PATH]
    assert table.settle(PATH, V3, now=1.4) == (True, None)


def test_events_that_are_no_complete_write_lose_nothing() -> None:
    table = SettleTable(1.0)
    table.add(PATH, V1, now=0.0, completed=None)  # found by a scan: maybe still being written
    assert table.offer(PATH, V2, now=0.1, completed=None) is None  # a modify event
    assert table.offer(PATH, V2, now=0.2, completed=V2) is None  # the write completes
    touched = FileIdentity(V2.size, V2.mtime_ns, V2.ctime_ns + 5)  # chmod, or the publishing rename
    assert table.offer(PATH, touched, now=0.3, completed=touched) is None


def test_a_file_that_settles_as_another_version_lost_the_completed_one() -> None:
    """The newer write's own completion event is still queued (the lane was busy)."""
    table = SettleTable(1.0)
    table.add(PATH, V1, now=0.0, completed=V1)
    take, lost = table.settle(PATH, V2, now=1.0)
    assert not take and lost is not None and lost.lost == V1 and lost.by == V2
    assert table.offer(PATH, V2, now=1.1, completed=V2) is None  # not reported twice
    assert table.settle(PATH, V2, now=2.1) == (True, None)


def test_a_file_gone_before_its_deadline_is_dropped() -> None:
    table = SettleTable(1.0)
    table.add(PATH, V1, now=0.0, completed=V1)
    assert table.settle(PATH, None, now=1.0) == (False, None)
    assert PATH not in table and len(table) == 0
