"""The run rule (chunkd.runs): which run a new round version joins, from write times alone."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chunkd.runs import FIRST_RUN, Written, WrittenVersions
from chunkd.runs import assign_run as assign


def assign_run(round_num, mtime_ns, stored, **kw):
    return assign(round_num, mtime_ns, WrittenVersions(stored), **kw)


def job(run: int, rounds: range, start_ns: int, step_ns: int = 10) -> list[Written]:
    return [Written(run, r, start_ns + i * step_ns) for i, r in enumerate(rounds)]


def test_a_run_is_numbered_by_the_write_time_of_the_file_that_starts_it():
    assert assign_run(7, 100, []) == 100
    assert assign_run(7, None, []) == FIRST_RUN  # bytes with no file to date them


def test_a_recreated_database_starts_newer_than_its_old_copy():
    """Runs numbered by time: a client whose database was deleted (and whose replica still holds
    run 1000's rounds) starts again with a run newer than that."""
    old = job(1000, range(1, 6), 1000)
    fresh = assign_run(1, 9000, [])
    assert fresh > max(v.run for v in old)


def test_a_job_restarted_from_round_1_starts_a_new_run_even_when_round_1_was_pruned():
    stored = job(0, range(6, 11), 1000)  # rounds 1-5 pruned, 6-10 kept
    assert assign_run(1, 5000, stored) == 5000


def test_a_job_resumed_past_its_last_round_continues_its_run():
    stored = job(0, range(1, 8), 1000)
    assert assign_run(8, 5000, stored) == 0


def test_a_backlog_ingested_in_any_order_stays_one_run():
    # rounds 1..10 written in order; the daemon takes them 10, 9, ..., 1
    written = {r: 1000 + 10 * r for r in range(1, 11)}
    stored: list[Written] = []
    for r in sorted(written, reverse=True):
        run = assign_run(r, written[r], stored)
        assert run == written[10]  # the run the first file taken started
        stored.append(Written(run, r, written[r]))


def test_a_rewrite_of_a_round_of_the_newest_run_starts_a_new_run():
    stored = job(0, range(1, 4), 1000)
    assert assign_run(2, 5000, stored, replacing=stored[1]) == 5000
    # even without a write time (bytes from a pipe), the new version is newer than the old one
    assert assign_run(2, None, stored, replacing=stored[1]) == 1


def test_a_rewrite_of_an_earlier_runs_round_joins_the_newest_run_when_it_continues_it():
    a = job(0, range(4, 11), 1000)
    b = job(1, range(1, 4), 3000)
    replacing = a[0]  # round 4 of run 0, rewritten by the restarted job's round 4
    assert assign_run(4, 4000, a + b, replacing=replacing) == 1


def test_a_late_file_of_an_earlier_run_is_not_newer_than_the_restart():
    a = job(0, range(1, 9), 1000)  # run 0 wrote 1..8 at 1000..1070, and 9 at 1080 (found late)
    b = job(1, range(1, 3), 2000)  # the restarted job's 1, 2
    assert assign_run(9, 1080, a + b) == 0


def test_a_late_file_older_than_every_run_joins_the_oldest():
    a = job(3, range(5, 9), 1000)
    assert assign_run(2, 10, a + job(4, range(1, 3), 2000)) == 3


def test_no_write_time_continues_the_newest_run():
    assert assign_run(1, None, job(2, range(1, 5), 1000)) == 2


@given(
    st.lists(
        st.tuples(st.integers(1, 30), st.integers(0, 10**6)),
        min_size=1,
        max_size=25,
        unique_by=lambda t: t[1],
    )
)
def test_runs_never_go_backwards_for_files_taken_in_write_order(files):
    """Taken in the order they were written (the watcher's order), every file's run is at least the
    previous one's, and a round number that does not grow starts a new run."""
    stored: list[Written] = []
    previous_run = FIRST_RUN
    previous_round = None
    for round_num, mtime in sorted(files, key=lambda f: f[1]):
        run = assign_run(round_num, mtime, stored)
        assert run >= previous_run
        if previous_round is not None and round_num <= previous_round:
            assert run > previous_run
        stored.append(Written(run, round_num, mtime))
        previous_run, previous_round = run, round_num
