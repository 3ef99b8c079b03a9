"""Who may do what over the socket: admins anything, a client directory's owner reads it.

The model (docs/SPEC.md, "The socket protocol"; the matrix is in docs/PROTOCOL.md):

* **Admins** may do anything for any client: root, the daemon's own uid (it can open the
  databases directly anyway), every uid in ``allowed_uids`` and every peer with a group in
  ``allowed_gids``.
* **Any other peer** may *read* (``list``, ``restore``, ``export``, ``verify``) the clients whose
  directory it owns, and change nothing (``prune`` and ``ingest`` are refused).
* ``ping`` and ``status`` (daemon health, no checkpoint data) are open to whoever can connect,
  which the socket's mode 0660 already limits to the daemon's group.
* Everything else is ``forbidden``.

Ownership is the owner *uid* of the client directory, looked at when the request is served
(``lstat``: a symlinked directory is judged by the link, which a tenant can own, so a link to
another tenant's directory grants nothing). The directory's *group* grants nothing: under the
systemd layout every tenant shares group ``chunkd`` to reach the socket, so a group rule would
let every tenant read every other.

The peer's groups come from the connection itself (``SO_PEERGROUPS``, the supplementary groups
the kernel recorded at ``connect()``), never from NSS: a user removed from a group in
``/etc/group`` but still running with it is judged by what it runs with, and a uid without a
passwd entry (containers, ``setpriv``) is judged at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from chunkd.daemon.connection import Peer
from chunkd.daemon.state import ClientInfo
from chunkd.errors import ForbiddenError

#: Commands that change a database: admins only.
CHANGE_COMMANDS: Final = frozenset({"prune", "ingest", "forget"})
#: Commands that read one client's data: admins, or the owner of the client's directory.
READ_COMMANDS: Final = frozenset({"list", "restore", "export", "verify"})
#: Commands about the daemon only: whoever could connect.
OPEN_COMMANDS: Final = frozenset({"ping", "status"})


@dataclass(frozen=True, slots=True)
class Access:
    """One peer's rights, decided once per request from its credentials and the settings."""

    peer: Peer
    admin: bool

    @classmethod
    def decide(cls, peer: Peer, allowed_uids: Iterable[int], allowed_gids: Iterable[int]) -> Access:
        admin = (
            peer.uid in (0, os.geteuid())
            or peer.uid in set(allowed_uids)
            or not peer.groups.isdisjoint(allowed_gids)
        )
        return cls(peer, admin)

    def owns(self, info: ClientInfo) -> bool:
        """Whether the peer owns the client's directory (now; a vanished directory: no)."""
        try:
            return os.lstat(info.directory).st_uid == self.peer.uid
        except OSError:
            return False

    def may_read(self, info: ClientInfo) -> bool:
        return self.admin or self.owns(info)

    def readable(self, infos: Iterable[ClientInfo]) -> list[ClientInfo]:
        """The clients this peer may read, in the given order (``list``/``verify`` of all)."""
        return [info for info in infos if self.may_read(info)]

    def check_command(self, cmd: str) -> None:
        """Refuse a command this peer may never send, whatever the client."""
        if cmd in CHANGE_COMMANDS and not self.admin:
            raise ForbiddenError(
                f"{cmd}: uid {self.peer.uid} may not change databases (only root, the daemon's "
                "uid, allowed_uids and members of allowed_gids may)"
            )

    def check_read(self, info: ClientInfo) -> None:
        """Refuse reading a client that this peer neither administers nor owns."""
        if not self.may_read(info):
            raise ForbiddenError(
                f"uid {self.peer.uid} may not read client {info.client_id!r}: it does not own "
                f"{info.directory} and is not an admin (allowed_uids, allowed_gids)"
            )
