"""Where ``restore -o`` and ``export -o`` refuse to write (issue 9, item 3; issue 17, finding 5).

chunkd promises never to modify a client's files, and one mistyped ``-o`` must not destroy every
round of a client. Two rules, checked on the path after resolving symlinks (so ``-o
link-to-the-db`` is judged as the database itself) and before anything is created:

* **Never**, ``--force`` or not, onto a file of chunkd's own: a chunkd database (any SQLite
  file, a path the config's ``db_path`` gives for some client, a database the running daemon
  reports, the ``--db`` being read), that database's journal, WAL, shared-memory or lock file
  (``-journal``, ``-wal``, ``-shm``, ``.lock``), a lane's attempt file (``.attempt`` and its
  ``.attempt.tmp``, :mod:`chunkd.daemon.attempts`), or the daemon's socket and its ``.lock``.
  Writing there loses every stored round (or wedges the daemon), and no user means that, so
  the message does not offer ``--force``.
* **Unless** ``--force``, not inside a watched client directory: a directory under
  ``watch_root`` that ``client_dir_pattern`` matches, a ``[[clients]]`` directory, or one the
  daemon reports. Putting a restored round back beside a client's checkpoints can be meant.

docs/SPEC.md ("The socket protocol"): "A restore never writes into a watched client directory unless
forced, and never onto a chunkd database, journal or lock file, forced or not."
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import stat
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from chunkd.cli.offline import SQLITE_HEADER
from chunkd.errors import ChunkdError, RequestError

#: What SQLite and chunkd put beside a database file, and what each is called in a refusal.
#: ``.attempt.tmp`` comes before ``.attempt``: the longest suffix names the file.
SIDECARS: tuple[tuple[str, str], ...] = (
    (".attempt.tmp", "attempt"),
    (".attempt", "attempt"),
    ("-journal", "journal"),
    ("-wal", "WAL"),
    ("-shm", "shared-memory"),
    (".lock", "lock"),
)


def add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help="write even into a watched client directory (never onto a chunkd database or its"
        " journal, lock or attempt files)",
    )


@dataclass
class _Protected:
    """The paths (resolved) that the two rules compare an output with."""

    databases: list[Path] = field(default_factory=list)
    sockets: list[Path] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)


def check_output(
    spec: str,
    args: argparse.Namespace,
    reported: Iterable[tuple[str | None, str | None]] = (),
) -> None:
    """RequestError (exit 2) if ``-o spec`` would land on a chunkd file (always) or in a client
    directory (unless ``--force``).

    ``reported`` are ``(directory, database)`` pairs the daemon reports for its clients.
    Nothing is checked for ``-`` (stdout).
    """
    if spec == "-":
        return
    target = _resolve(Path(os.path.abspath(spec)))
    protected = _configured(args, target)
    for directory, db in reported:
        if directory:
            protected.directories.append(_resolve(Path(directory)))
        if db:
            protected.databases.append(_resolve(Path(db)))
    if getattr(args, "db", None) is not None:
        protected.databases.append(_resolve(Path(os.path.abspath(args.db))))
    reason = _chunkd_file(target, protected.databases, protected.sockets)
    if reason is not None:
        raise RequestError(
            f"refusing to write to {spec}: it is {reason}; chunkd never writes over a "
            "database or its journal, lock or attempt file, forced or not: choose another "
            "file name"
        )
    if getattr(args, "force", False):
        return
    for directory in protected.directories:
        if target.is_relative_to(directory):
            raise RequestError(
                f"refusing to write to {spec}: it is inside the watched client directory "
                f"{directory}; chunkd does not write clients' files unless told to (use --force "
                "to write there anyway)"
            )


def _chunkd_file(target: Path, databases: list[Path], sockets: list[Path]) -> str | None:
    """What file of chunkd's ``target`` (resolved) is, as a refusal says it; None if none.

    By name (a known database or socket, or a sidecar of one) and by content (any SQLite file,
    so that a copy, or a database chunkd was never told about, is recognised too).
    """
    if _is_sqlite(target):
        return "a SQLite database"
    if target in databases:
        return "a chunkd database"
    if target in sockets:
        return "the daemon's socket"
    for suffix, kind in SIDECARS:
        if not target.name.endswith(suffix) or len(target.name) == len(suffix):
            continue
        main = target.with_name(target.name[: -len(suffix)])
        if main in databases or _is_sqlite(main):
            return f"the {kind} file of the database {main}"
        if kind == "lock" and main in sockets:
            return f"the lock file of the daemon's socket {main}"
    return None


def _is_sqlite(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts like every SQLite 3 database."""
    try:  # O_NONBLOCK: a FIFO named by -o must not hang the check; only regular files count
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return (
            stat.S_ISREG(os.fstat(fd).st_mode)
            and os.pread(fd, len(SQLITE_HEADER), 0) == SQLITE_HEADER
        )
    except OSError:
        return False
    finally:
        os.close(fd)


def _resolve(path: Path) -> Path:
    """``path`` with every symlink resolved; as given when that fails (a link loop)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path


def _configured(args: argparse.Namespace, target: Path) -> _Protected:
    """Databases, socket and client directories the config names that ``target`` could hit."""
    from chunkd.cli.options import load_cli_settings

    protected = _Protected()
    if getattr(args, "socket", None):
        protected.sockets.append(_resolve(Path(os.path.abspath(args.socket))))
    try:
        settings = load_cli_settings(args)
    except ChunkdError:
        return protected  # no usable config: the by-content and daemon checks still apply
    protected.sockets.append(_resolve(settings.socket))
    for client in settings.clients:
        protected.directories.append(_resolve(client.dir))
        protected.databases.append(_resolve(settings.db_path_for(client.id, client.dir)))
    root = _resolve(settings.watch_root)
    if target.is_relative_to(root) and target != root:
        first = target.relative_to(root).parts[0]
        match = settings.client_dir_pattern.fullmatch(first)
        if match is not None and (root / first) != target:
            protected.directories.append(root / first)
        if match is not None:
            with contextlib.suppress(ChunkdError):
                db = settings.db_path_for(match.group("client"), root / first)
                protected.databases.append(_resolve(db))
    main = target
    for suffix, _ in SIDECARS:
        if target.name.endswith(suffix) and len(target.name) > len(suffix):
            main = target.with_name(target.name[: -len(suffix)])
            break
    for candidate in {target, main}:
        if _matches_db_template(settings.db_path, candidate):
            protected.databases.append(candidate)
    return protected


def _matches_db_template(template: str, target: Path) -> bool:
    """Whether ``target`` has the shape ``db_path`` gives (``/var/lib/chunkd/{client}.db``)."""
    pattern = ""
    for literal, name, _, _ in string.Formatter().parse(template):
        pattern += re.escape(literal)
        if name == "client":
            pattern += r"[A-Za-z0-9_.-]{1,64}"
        elif name == "client_dir":
            pattern += r".+"
    return re.fullmatch(pattern, str(target)) is not None
