"""One order for "newest" on a real store (SPEC "Rounds"): run, then round number.

A job restarted or rerun into the same directory starts a new run, newer than every earlier one,
whether or not its round numbers are still stored; a backlog of one run ingested in any order stays
one run; ``latest`` is the round most recently written; the round just ingested is never removed.
Write times are set explicitly (``os.utime``): a real restart is seconds after the last round, and
a kernel's coarse file clock must not decide a test.
"""

from __future__ import annotations

import os
from pathlib import Path

from chunkd.ingest import IngestOptions, ingest_file
from chunkd.prune import prune_store
from chunkd.store import ChunkStore
from tests.engine.test_invariants import restore_bytes, state
from tests.strategies import save_checkpoint

SECOND = 1_000_000_000
T0 = 1_800_000_000 * SECOND


def write(directory: Path, round_num: int, seed: int, at_s: float) -> tuple[Path, bytes]:
    path = directory / f"model_round_{round_num}.pth"
    data = save_checkpoint(state(seed), path)
    ns = T0 + int(at_s * SECOND)
    os.utime(path, ns=(ns, ns))
    return path, data


def take(store: ChunkStore, path: Path, keep: int) -> int:
    """Ingest as the daemon does (each file in turn) with retention after every round."""
    result = ingest_file(path, store, IngestOptions())
    prune_store(store, keep)
    return result.round_num


def test_a_restarted_job_is_newer_than_the_previous_run(tmp_path, db_path):
    """Finding 1 of issue 17: rounds 1-10 with keep 5, then the job restarts from round 1. Its
    rounds were pruned as soon as they arrived (round 1 had been pruned, so it joined the old run
    and sorted oldest); with delete_after_ingest nothing of the restarted job was left."""
    with ChunkStore.open_writer(db_path) as store:
        for r in range(1, 11):
            take(store, write(tmp_path, r, r, r)[0], 5)
        assert store.round_numbers() == [6, 7, 8, 9, 10]
        restarted = {}
        for r in range(1, 6):
            path, data = write(tmp_path, r, 100 + r, 60 + r)
            restarted[r] = data
            take(store, path, 5)
            assert store.latest_round() == r
            assert r in store.round_numbers(), f"the restarted job's round {r} was pruned"
        assert store.round_numbers() == [1, 2, 3, 4, 5]
        for r, data in restarted.items():
            assert restore_bytes(store, r) == data


def test_a_rerun_that_stops_early_keeps_its_rounds(tmp_path, db_path):
    """Finding 1, second form: keep 5 after a rerun of rounds 1-3; the dry run said "would remove
    rounds 1, 2, 3; keeps 4, 5, 6, 7, 8"."""
    with ChunkStore.open_writer(db_path) as store:
        for r in range(1, 9):
            take(store, write(tmp_path, r, r, r)[0], 5)
        for r in range(1, 4):
            ingest_file(write(tmp_path, r, 50 + r, 30 + r)[0], store, IngestOptions())
        plan = prune_store(store, 5, dry_run=True).plan
        assert plan.remove == (4, 5, 6)
        assert plan.keep == (1, 2, 3, 7, 8)
        assert store.latest_round() == 3


def test_a_backlog_taken_in_any_order_stays_one_run(tmp_path, db_path):
    """After downtime the daemon finds rounds 1-10 at once and takes them in name order
    (1, 10, 2, 3, ...): still one run, so the highest numbers are the newest."""
    files = {r: write(tmp_path, r, r, r)[0] for r in range(1, 11)}
    with ChunkStore.open_writer(db_path) as store:
        for r in sorted(files, key=lambda r: files[r].name):
            take(store, files[r], 5)
        assert len({v.run for v in store.list_versions()}) == 1
        assert store.round_numbers() == [6, 7, 8, 9, 10]
        assert store.latest_round() == 10


def test_a_late_file_of_an_earlier_run_is_not_latest(tmp_path, db_path):
    """A file written before the restart but taken after it (events lost) belongs to the earlier
    run: ``latest`` stays the restarted job's round, and retention orders it before the restart."""
    with ChunkStore.open_writer(db_path) as store:
        for r in range(1, 9):
            take(store, write(tmp_path, r, r, r)[0], 3)
        late, late_bytes = write(tmp_path, 9, 9, 9)  # written at 9 s, not seen yet
        other = tmp_path / "restart"
        other.mkdir()
        restart = other / "model_round_1.pth"
        save_checkpoint(state(101), restart)
        os.utime(restart, ns=(T0 + 20 * SECOND, T0 + 20 * SECOND))
        take(store, restart, 3)
        assert store.latest_round() == 1
        take(store, late, 3)
        assert store.latest_round() == 1, "a late file of the old run posed as the newest round"
        assert store.round_numbers() == [1, 8, 9]  # by the order: 8 and 9 of run 0, then 1
        assert restore_bytes(store, 9) == late_bytes
        take(store, write(other, 2, 102, 21)[0], 3)
        assert store.round_numbers() == [1, 2, 9]


def test_the_round_just_ingested_is_never_removed(tmp_path, db_path):
    """An operator's ``chunkd ingest --round 2`` of an old file: not the newest by the order, but
    the pass right after keeps it."""
    with ChunkStore.open_writer(db_path) as store:
        for r in range(3, 8):
            take(store, write(tmp_path, r, r, 100 + r)[0], 5)
        old = tmp_path / "archive.pth"
        save_checkpoint(state(2), old)
        os.utime(old, ns=(T0, T0))
        ingest_file(old, store, IngestOptions(), round_num=2)
        plan = prune_store(store, 5).plan
        assert 2 in plan.keep and 2 in plan.held
        assert store.round_numbers() == [2, 3, 4, 5, 6, 7]


def test_list_shows_rounds_newest_last_in_the_order(tmp_path, db_path):
    """``list`` uses the one order too: after a restart the restarted job's rounds come last."""
    from chunkd.summary import summarize_store

    with ChunkStore.open_writer(db_path) as store:
        for r in range(1, 6):
            take(store, write(tmp_path, r, r, r)[0], 0)
        for r in (1, 2):
            take(store, write(tmp_path, r, 100 + r, 60 + r)[0], 0)
        entry = summarize_store("1", store)
    assert [r["round"] for r in entry["rounds"]] == [3, 4, 5, 1, 2]
    assert entry["latest_round"] == 2
