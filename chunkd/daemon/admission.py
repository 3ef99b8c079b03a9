"""Who gets a connection or a request slot: fair shares and an admin reserve, from counts alone.

Why: the daemon has a fixed number of slots (open connections, requests being served at once),
and one tenant must not take them all from the others, nor every tenant together lock an admin
out of its own daemon (issue 19: 64 unread restores of one tenant held every request slot and
root's ``status`` got ``busy``). The same rule guards both resources, each with its own
:class:`Quota`:

* a non-admin may not take the last ``admin_reserved`` slots, and one uid, however many
  processes it runs, holds at most ``per_uid``;
* an admin may take any slot, but one admin *process* at most ``per_admin_process``: admins
  share uids (root), so a per-uid cap would let one runaway admin script lock out every other
  admin command. Kept below ``admin_reserved``, one such process leaves the others room.

Pure: holders and counts in, a refusal (the ``busy`` message) or None out; no I/O, no lock. The
server keeps a :class:`Slots` under its own lock and decides who is an admin
(:mod:`chunkd.daemon.access`). :class:`ServerLimits` holds every bound the server enforces
(these quotas, and the timeouts that end what a silent client holds).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Quota:
    """How many slots of one kind there are and how they are shared.

    A reserve of ``total`` or more leaves non-admins nothing (a test's tiny server may do that).
    """

    #: "connections" or "requests": names the resource in refusals
    what: str
    total: int
    per_uid: int
    admin_reserved: int
    per_admin_process: int


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds (or asks for) a slot: the peer's uid and pid, and whether it is an admin."""

    uid: int
    pid: int
    admin: bool


class Tally:
    """How many slots are held: in all, by each uid, by each process (uid and pid)."""

    __slots__ = ("_by_process", "_by_uid", "total")

    def __init__(self, holders: Iterable[Holder] = ()) -> None:
        self.total = 0
        self._by_uid: Counter[int] = Counter()
        self._by_process: Counter[tuple[int, int]] = Counter()
        for holder in holders:
            self.add(holder)

    def add(self, holder: Holder) -> None:
        self.total += 1
        self._by_uid[holder.uid] += 1
        self._by_process[holder.uid, holder.pid] += 1

    def remove(self, holder: Holder) -> None:
        if self._by_process[holder.uid, holder.pid] <= 0:
            raise ValueError(f"{holder} holds no slot")
        self.total -= 1
        _decrement(self._by_uid, holder.uid)
        _decrement(self._by_process, (holder.uid, holder.pid))

    def of_uid(self, uid: int) -> int:
        return self._by_uid.get(uid, 0)

    def of_process(self, holder: Holder) -> int:
        return self._by_process.get((holder.uid, holder.pid), 0)


def _decrement(counter: Counter[Any], key: object) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


def refusal(quota: Quota, who: Holder, held: Tally) -> str | None:
    """Why ``who`` may not take one more slot while ``held`` are taken, or None if it may."""
    what = quota.what
    if who.admin:
        if held.total >= quota.total:
            return f"chunkd holds too many {what} ({held.total}); try again later"
        mine = held.of_process(who)
        if mine >= quota.per_admin_process:
            return (
                f"this process holds too many {what} to chunkd "
                f"({mine} of {quota.per_admin_process}); try again later"
            )
        return None
    if held.total >= quota.total - quota.admin_reserved:
        return f"chunkd holds too many {what}; try again later"
    mine = held.of_uid(who.uid)
    if mine >= quota.per_uid:
        return (
            f"uid {who.uid} holds too many {what} to chunkd "
            f"({mine} of {quota.per_uid}); try again later"
        )
    return None


class Slots:
    """A :class:`Tally` that admits by its :class:`Quota`; the caller serializes the calls."""

    __slots__ = ("held", "quota")

    def __init__(self, quota: Quota) -> None:
        self.quota = quota
        self.held = Tally()

    def take(self, who: Holder) -> str | None:
        """Take a slot for ``who``; None if taken, else why not (nothing is taken then)."""
        reason = refusal(self.quota, who, self.held)
        if reason is None:
            self.held.add(who)
        return reason

    def give_back(self, who: Holder) -> None:
        self.held.remove(who)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Bounds that keep one client from costing the others anything; tests shrink them.

    Connections and active requests are each shared by :mod:`chunkd.daemon.admission`: a cap
    per uid, the last slots reserved for admins, a cap per admin process.
    """

    max_connections: int = 256
    #: Connections one uid may hold, however many processes it runs: one user cannot take
    #: every slot from the others.
    max_connections_per_uid: int = 64
    #: The last slots of ``max_connections``, open to admins only (root can always get in).
    admin_reserved_connections: int = 16
    #: Connections one admin *process* may hold (admins share a uid, root, so a per-uid cap
    #: would let one runaway admin process lock out every other admin command).
    max_connections_per_admin_process: int = 128
    #: Requests served at once (one worker thread each).
    max_active_requests: int = 64
    #: Requests one uid may have served at once (an unread restore holds its slot until
    #: ``write_timeout_s``): a quarter, so no tenant can take what others and admins need.
    max_active_requests_per_uid: int = 16
    #: The last request slots, for admins only.
    admin_reserved_requests: int = 16
    #: Requests one admin process may have served at once: under the reserve, so one runaway
    #: admin process leaves other admin commands a slot.
    max_active_requests_per_admin_process: int = 8
    idle_timeout_s: float = 30.0
    write_timeout_s: float = 30.0
    #: After a final error answer, input is drained this long so the client reads the answer.
    linger_s: float = 1.0
    #: How long stop() lets requests in flight finish before cutting their connections.
    stop_timeout_s: float = 10.0
    #: Descriptors that may wait for their request line on one connection.
    max_pending_fds: int = 4

    def connection_quota(self) -> Quota:
        return Quota(
            "connections",
            self.max_connections,
            self.max_connections_per_uid,
            self.admin_reserved_connections,
            self.max_connections_per_admin_process,
        )

    def request_quota(self) -> Quota:
        return Quota(
            "requests",
            self.max_active_requests,
            self.max_active_requests_per_uid,
            self.admin_reserved_requests,
            self.max_active_requests_per_admin_process,
        )
