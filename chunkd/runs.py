"""Which *run* a new round version belongs to: pure policy, no I/O (SPEC "Rounds", "Order").

Rounds are ordered by run, then round number (:attr:`chunkd.store.RoundInfo.order_key`); that one
order is what ``latest``, local and replica retention, the upload stage and ``lag_rounds`` use.
A run is one pass of a training job through a client directory. A job restarted or rerun into the
same directory starts again at round 1 (or at a resume point), and its rounds must be newer than
the previous run's higher-numbered ones: otherwise retention, keeping "the N highest", removes a
restarted job's rounds as soon as they arrive.

The signal is the file's write time (its mtime) against the rounds already stored:

* a file that **rewrites** a round of the newest run (new content from the same path) starts a new
  run, so the new version is always newer than the one it replaces (a rewrite of an earlier run's
  round follows the rules below, which already put it in the newest run or a newer one);
* a file whose round number is at or below a round of the newest run that was *written before it*
  starts a new run: numbers went back in time, so a job started again. That holds whether or not
  the restarted numbers are still stored (the previous run's highest round always is: retention
  never removes the newest round of the newest run);
* a file written *before* the newest run began is a late file of an earlier run (events lost, a
  backlog found by a scan after the restart's first files): it joins the newest run that had begun
  by then, and never pretends to be newer than what was written after it;
* anything else continues the newest run: a backlog of one run ingested in any order after downtime
  stays one run, because each file is compared only with rounds written before it.

Versions stored before chunkd recorded write times stand in their ingest time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: The run of a client's first round.
FIRST_RUN: int = 0


@dataclass(frozen=True, slots=True)
class Written:
    """A stored version as the run rule sees it: its run, round number and write time."""

    run: int
    round_num: int
    mtime_ns: int


def assign_run(
    round_num: int,
    mtime_ns: int | None,
    stored: Iterable[Written],
    *,
    replacing: Written | None = None,
) -> int:
    """The run for a new version of ``round_num`` whose file was written at ``mtime_ns``.

    ``stored`` is every version the client has (current and earlier generations); ``replacing``
    is the current version of ``round_num`` when this is new content for a stored round.
    ``mtime_ns`` is None when the bytes have no file to date them: the version continues the
    newest run (or starts the next one if it replaces a round of it).
    """
    versions = list(stored)
    if not versions:
        return FIRST_RUN
    newest = max(v.run for v in versions)
    if replacing is not None and replacing.run >= newest:
        return newest + 1
    if mtime_ns is None:
        return newest
    current = [v for v in versions if v.run == newest]
    if any(v.round_num >= round_num and v.mtime_ns < mtime_ns for v in current):
        return newest + 1
    if mtime_ns < min(v.mtime_ns for v in current):
        return _run_at(mtime_ns, versions)
    return newest


def _run_at(mtime_ns: int, versions: list[Written]) -> int:
    """The newest run that had begun (written its first stored file) by ``mtime_ns``; the oldest
    stored run if none had."""
    began: dict[int, int] = {}
    for v in versions:
        began[v.run] = min(began.get(v.run, v.mtime_ns), v.mtime_ns)
    started = [run for run, first in began.items() if first <= mtime_ns]
    return max(started) if started else min(began)
