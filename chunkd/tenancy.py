"""The tenant layout as a plan: what ``chunkd tenant add`` must change so that a tenant reaches
the socket and its own client directory, and nothing of any other tenant.

Two groups, two jobs (README, "Tenants"):

* the **daemon's group** (``chunkd``) owns every client directory, setgid, mode 2750. Only the
  daemon is in it: that is how it reads every tenant's checkpoints. A tenant in this group could
  read them all, so a tenant is never in it.
* the **socket group** (``socket_group``, ``chunkd-users`` as installed) owns the socket, mode
  0660. Tenants and operators join it to talk to the daemon, which then lets each read only the
  clients whose directory it owns.

Each client directory belongs to its tenant (who writes the checkpoints), group ``chunkd``, 2750;
the watch root belongs to root and no one else may write it, so no tenant can rename, replace or
delete another's directory. Databases are not in the client directories but under the unit's
``StateDirectory`` (0700), chunkd's alone.

Pure: :func:`plan_tenant` takes what the caller looked up (accounts, groups, ``lstat``) and
returns the steps, or refuses with the reason; :mod:`chunkd.cli.tenant` looks things up and
carries the steps out. A plan that is already in place is empty, so the command can be re-run.
"""

from __future__ import annotations

from dataclasses import dataclass

from chunkd.errors import RequestError

#: Owner rwx, group r-x, setgid (new files and directories inherit the daemon's group).
CLIENT_DIR_MODE = 0o2750
_S_IWGRP, _S_IWOTH = 0o020, 0o002


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int  # primary group


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    gid: int
    members: frozenset[str]  # supplementary members (/etc/group), not primary-group users

    def has(self, account: Account) -> bool:
        return account.gid == self.gid or account.name in self.members


@dataclass(frozen=True, slots=True)
class Entry:
    """``lstat`` of a path, as much as the plan needs."""

    is_dir: bool
    is_symlink: bool
    uid: int
    gid: int
    mode: int  # permission bits, setgid included (S_IMODE)


@dataclass(frozen=True, slots=True)
class OwnDirectory:
    """Give the client directory to the tenant (creating it first when ``create``)."""

    path: str
    uid: int
    gid: int
    mode: int
    create: bool

    def describe(self) -> str:
        if self.create:
            return f"create {self.path} (uid {self.uid}, gid {self.gid}, mode {self.mode:o})"
        return f"give {self.path} to uid {self.uid}, gid {self.gid}, mode {self.mode:o}"


@dataclass(frozen=True, slots=True)
class GroupMembership:
    """Add the tenant to a group (``join``) or take it out."""

    user: str
    group: str
    join: bool

    def describe(self) -> str:
        if self.join:
            return f"add {self.user} to group {self.group} (the socket's)"
        return (
            f"remove {self.user} from group {self.group}: that group reads every client directory"
        )


Step = OwnDirectory | GroupMembership


@dataclass(frozen=True, slots=True)
class TenantRequest:
    """Everything :func:`plan_tenant` decides from, looked up by the caller."""

    tenant: Account
    daemon_user: str
    daemon_group: Group
    socket_group: Group | None  # None: ``socket_group`` is empty (the daemon's own group)
    parent: str  # the directory the client directory is in: watch_root for a discovered client
    parent_entry: Entry | None
    client_dir: str
    client_dir_entry: Entry | None


def plan_tenant(request: TenantRequest) -> list[Step]:
    """The steps that give ``request.tenant`` its client directory and the socket, and take away
    any read access to other tenants' files; RequestError with the reason where the layout cannot
    isolate tenants."""
    tenant, daemon_group, socket_group = request.tenant, request.daemon_group, request.socket_group
    if tenant.uid == 0 or tenant.name == request.daemon_user:
        raise RequestError(f"{tenant.name} is an admin, not a tenant: give it no client directory")
    if socket_group is None:
        raise RequestError(
            "socket_group is empty, so the socket belongs to the daemon's group, which reads every "
            "client directory: set socket_group to a group of its own (chunkd-users as installed)"
        )
    if socket_group.gid == daemon_group.gid:
        raise RequestError(
            f"socket_group is {socket_group.name}, the group that reads every client directory: "
            "tenants who join it to reach the socket could read each other's checkpoints; set "
            "socket_group to a group of its own (chunkd-users as installed)"
        )
    if tenant.gid == daemon_group.gid:
        raise RequestError(
            f"{tenant.name}'s primary group is {daemon_group.name}, the group that reads every "
            "client directory: give the tenant another primary group first"
        )
    _check_parent(request.parent, request.parent_entry)
    steps: list[Step] = []
    wanted = (tenant.uid, daemon_group.gid, CLIENT_DIR_MODE)
    entry = request.client_dir_entry
    if entry is None:
        steps.append(OwnDirectory(request.client_dir, *wanted, create=True))
    elif entry.is_symlink or not entry.is_dir:
        raise RequestError(
            f"{request.client_dir} exists and is not a directory (a symlink or a file): remove it"
        )
    elif entry.uid not in (0, tenant.uid):
        raise RequestError(
            f"{request.client_dir} belongs to uid {entry.uid}, not to {tenant.name}: another "
            "tenant's? Check the client id; a directory is handed over only from root"
        )
    elif (entry.uid, entry.gid, entry.mode) != wanted:
        steps.append(OwnDirectory(request.client_dir, *wanted, create=False))
    if not socket_group.has(tenant):
        steps.append(GroupMembership(tenant.name, socket_group.name, join=True))
    if tenant.name in daemon_group.members:
        steps.append(GroupMembership(tenant.name, daemon_group.name, join=False))
    return steps


def _check_parent(path: str, entry: Entry | None) -> None:
    """The directory holding the client directories (the watch root) must be root's and writable
    by root alone: whoever can write it can rename a client directory away and put their own in
    its place."""
    if entry is None:
        raise RequestError(f"{path} does not exist: create it (owner root, mode 0755)")
    if entry.is_symlink or not entry.is_dir:
        raise RequestError(f"{path} is not a directory")
    if entry.uid != 0 or entry.mode & (_S_IWGRP | _S_IWOTH):
        raise RequestError(
            f"{path} is owned by uid {entry.uid} with mode {entry.mode:o}: "
            "it must belong to root and be writable by root alone (chown root: and chmod 0755), "
            "or a tenant could replace another's directory"
        )


def reading_group_warning(group: str, members: list[str], daemon_user: str) -> str | None:
    """What the daemon says at start-up when its own group, which reads every client directory in
    the documented layout, has members besides the daemon: each of them reads every tenant's
    checkpoints (the old README layout put every tenant there). None when it has none."""
    others = sorted(set(members) - {daemon_user})
    if not others:
        return None
    shown = ", ".join(others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
    return (
        f"group {group}, the daemon's own, has other members ({shown}): it reads every client "
        "directory, so they read every tenant's checkpoints; `chunkd tenant add USER ID` takes "
        'a tenant out of it (README "Tenants")'
    )
