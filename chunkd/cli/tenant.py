"""``chunkd tenant add USER ID``: give a tenant its client directory and the socket, and nothing of
any other tenant's (README, "Tenants"; the layout and its reasons in :mod:`chunkd.tenancy`).

Run as root on the daemon's host, with the daemon's config. It looks up the accounts and the
directory, plans with :func:`chunkd.tenancy.plan_tenant`, then carries the plan out: the directory
is made 0700 first and opened without following symlinks before it is handed over, and group
membership goes through ``gpasswd`` (shadow-utils), which edits ``/etc/group`` and
``/etc/gshadow`` under their locks. ``--dry-run`` prints the plan and changes nothing; a second
run finds nothing to do. The tenant's new group takes effect at its next login.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from chunkd import tenancy
from chunkd.cli import options
from chunkd.cli.render import print_json
from chunkd.errors import ForbiddenError, NotFoundError, RequestError

if TYPE_CHECKING:
    from chunkd.config import Settings


def add_parser(commands: options.Commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "tenant",
        parents=[common],
        help="add a tenant: its client directory and the socket, nothing of others'",
        description="Give USER the client directory of client ID (owner USER, group of the "
        "daemon, setgid 2750) and membership of the socket group, and take it out of the "
        "daemon's group. Run as root; idempotent.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", parents=[common], help="add (or repair) one tenant")
    add.add_argument("user", metavar="USER", help="the tenant's account (name or uid)")
    add.add_argument("client", type=options.client_id, metavar="ID", help="its client id")
    add.add_argument(
        "--daemon-user",
        default="chunkd",
        metavar="NAME",
        help="the account the daemon runs as; its group reads the client directories "
        "(default: chunkd)",
    )
    add.add_argument("--dry-run", action="store_true", help="only print what would change")
    add.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = options.load_cli_settings(args)
    request = _look_up(args, settings)
    steps = tenancy.plan_tenant(request)
    if not args.dry_run:
        if os.geteuid() != 0:
            raise ForbiddenError("chunkd tenant add changes owners and groups: run it as root")
        for step in steps:
            _carry_out(step)
    if args.json:
        print_json(
            {
                "user": request.tenant.name,
                "client": args.client,
                "dir": request.client_dir,
                "dry_run": args.dry_run,
                "steps": [step.describe() for step in steps],
            }
        )
    elif not steps:
        print(f"{request.tenant.name}: client {args.client} at {request.client_dir}, nothing to do")
    else:
        verb = "would" if args.dry_run else "did"
        for step in steps:
            print(f"{verb}: {step.describe()}")
        joins = any(isinstance(s, tenancy.GroupMembership) and s.join for s in steps)
        if joins and not args.dry_run:
            print(f"{request.tenant.name} reaches the socket from its next login")
    return 0


def _look_up(args: argparse.Namespace, settings: Settings) -> tenancy.TenantRequest:
    tenant = _account(args.user)
    daemon = _account(args.daemon_user)
    daemon_group = _group(str(daemon.gid))
    socket_group = _group(settings.socket_group) if settings.socket_group else None
    client_dir = _client_dir(settings, args.client)
    return tenancy.TenantRequest(
        tenant=tenant,
        daemon_user=daemon.name,
        daemon_group=daemon_group,
        socket_group=socket_group,
        parent=str(client_dir.parent),
        parent_entry=_entry(client_dir.parent),
        client_dir=str(client_dir),
        client_dir_entry=_entry(client_dir),
    )


def _client_dir(settings: Settings, client: str) -> Path:
    """The client's directory: its ``[[clients]]`` entry, else ``client_<ID>`` under the watch
    root, which ``client_dir_pattern`` must discover as this very id."""
    for explicit in settings.clients:
        if explicit.id == client:
            return explicit.dir
    name = f"client_{client}"
    found = settings.client_dir_pattern.fullmatch(name)
    if found is None or found.group("client") != client:
        raise RequestError(
            f"client_dir_pattern {settings.client_dir_pattern.pattern!r} does not find client "
            f"{client!r} in a directory named {name!r}: list the client under [[clients]]"
        )
    return settings.watch_root / name


def _account(name_or_uid: str) -> tenancy.Account:
    try:
        entry = (
            pwd.getpwuid(int(name_or_uid)) if name_or_uid.isdigit() else pwd.getpwnam(name_or_uid)
        )
    except KeyError:
        raise NotFoundError(f"no account {name_or_uid!r} on this host") from None
    return tenancy.Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _group(name_or_gid: str) -> tenancy.Group:
    try:
        entry = (
            grp.getgrgid(int(name_or_gid)) if name_or_gid.isdigit() else grp.getgrnam(name_or_gid)
        )
    except KeyError:
        raise NotFoundError(f"no group {name_or_gid!r} on this host") from None
    return tenancy.Group(entry.gr_name, entry.gr_gid, frozenset(entry.gr_mem))


def _entry(path: Path) -> tenancy.Entry | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return tenancy.Entry(
        is_dir=stat.S_ISDIR(st.st_mode),
        is_symlink=stat.S_ISLNK(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mode=stat.S_IMODE(st.st_mode),
    )


def _carry_out(step: tenancy.Step) -> None:
    if isinstance(step, tenancy.OwnDirectory):
        if step.create:
            os.mkdir(step.path, 0o700)  # nobody else's until it is handed over below
        fd = os.open(step.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchown(fd, step.uid, step.gid)
            os.fchmod(fd, step.mode)  # after chown, which clears the setgid bit
        finally:
            os.close(fd)
    else:
        flag = "-a" if step.join else "-d"
        gpasswd = shutil.which("gpasswd")
        if gpasswd is None:
            raise NotFoundError("gpasswd (shadow-utils, package passwd) is needed to edit groups")
        done = subprocess.run(
            [gpasswd, flag, step.user, step.group], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RequestError(f"gpasswd {flag} {step.user} {step.group}: {done.stderr.strip()}")
