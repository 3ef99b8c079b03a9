"""Which round versions retention removes: pure policy, no I/O.

``chunk_keep_rounds = N`` keeps the N newest rounds (0 keeps everything). "Newest" is the order
key ``(run, round_num)``: within one run of a client that is simply the highest round numbers
(docs/SPEC.md, "Rounds"); a job restarted or rerun into the same directory starts a new run
(:mod:`chunkd.runs`), so the restarted job's round 1 is newer than the previous run's round 10
and is never pruned in its favour. The round just ingested is never removed, whatever its place
in the order (a late file of an earlier run stays until the next ingest).

Earlier generations of rewritten rounds (a rerun's predecessors) are kept while their round is
kept, at most N of them (the newest), so rewriting one file forever cannot grow the store without
bound. A round that a restore is reading (a lease, see :mod:`chunkd.daemon.leases`) is
never removed, with all its versions; it stays until a later run once the lease is released.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    keep: tuple[int, ...]
    remove: tuple[int, ...]
    #: rounds that policy would remove but a lease (or having just been ingested) protects this time
    held: tuple[int, ...]
    #: earlier generations removed, as ``(round_num, generation)``
    generations_removed: tuple[tuple[int, int], ...] = ()


class Version(Protocol):
    @property
    def round_num(self) -> int: ...
    @property
    def generation(self) -> int: ...
    @property
    def current(self) -> bool: ...
    @property
    def order_key(self) -> tuple[int, int, int]: ...


def plan_retention(
    round_nums: Iterable[int], keep_rounds: int, leased: Collection[int] = ()
) -> RetentionPlan:
    """The plan for rounds of one run (no rewrites): the highest numbers stay."""
    if keep_rounds < 0:
        raise ValueError("keep_rounds must be >= 0")
    ordered = sorted(set(round_nums))
    return _plan_current(ordered, keep_rounds, leased)


def _plan_current(
    newest_last: list[int], keep_rounds: int, leased: Collection[int]
) -> RetentionPlan:
    if keep_rounds == 0 or len(newest_last) <= keep_rounds:
        return RetentionPlan(keep=tuple(sorted(newest_last)), remove=(), held=())
    cut = len(newest_last) - keep_rounds
    old, newest = newest_last[:cut], newest_last[cut:]
    held = tuple(sorted(r for r in old if r in leased))
    remove = tuple(sorted(r for r in old if r not in leased))
    return RetentionPlan(keep=tuple(sorted(newest + list(held))), remove=remove, held=held)


def plan_versions(
    versions: Iterable[Version],
    keep_rounds: int,
    leased: Collection[int] = (),
    just_ingested: int | None = None,
) -> RetentionPlan:
    """The plan for every stored version (current rounds and earlier generations).

    ``just_ingested`` is the round committed last: kept this time even where the order puts it
    among the oldest (docs/SPEC.md, "the round just ingested is never removed by it")."""
    if keep_rounds < 0:
        raise ValueError("keep_rounds must be >= 0")
    everything = sorted(versions, key=lambda v: v.order_key)
    current = [v for v in everything if v.current]
    pinned = set(leased) if just_ingested is None else {*leased, just_ingested}
    plan = _plan_current([v.round_num for v in current], keep_rounds, pinned)
    if keep_rounds == 0:
        return plan
    kept = set(plan.keep)
    earlier = [v for v in everything if not v.current]
    of_kept_rounds = [v for v in earlier if v.round_num in kept]
    keep_earlier = {id(v) for v in of_kept_rounds[-keep_rounds:]}
    removed = tuple(
        (v.round_num, v.generation)
        for v in earlier
        if id(v) not in keep_earlier and v.round_num not in leased
    )
    return RetentionPlan(plan.keep, plan.remove, plan.held, removed)


def removes_nothing(rounds: int, generations: int, keep_rounds: int) -> bool:
    """Whether retention can have nothing to remove from a store holding ``rounds`` current
    rounds and ``generations`` earlier generations, without reading it: every round is kept, and
    so are the newest ``keep_rounds`` earlier generations of kept rounds (:func:`plan_versions`).
    """
    return keep_rounds == 0 or (rounds <= keep_rounds and generations <= keep_rounds)


class Ordered(Protocol):
    @property
    def order_key(self) -> tuple[int, int, int]: ...


OrderedT = TypeVar("OrderedT", bound=Ordered)


def newest(versions: Iterable[OrderedT], keep: int) -> list[OrderedT]:
    """The newest ``keep`` of ``versions`` by their order key (all of them with 0), oldest first.

    The one cut of "the newest N" for places that hold one version per round number: the
    replica's upload stage (which local rounds the bucket should hold), replica retention (which
    manifests stay) and ``lag_rounds``, so that they agree with local retention and ``latest``.
    """
    if keep < 0:
        raise ValueError("keep must be >= 0")
    ordered = sorted(versions, key=lambda v: v.order_key)
    return ordered[-keep:] if keep else ordered
