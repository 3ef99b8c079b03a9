"""Where ``restore -o`` and ``export -o`` refuse to write (issue 9, item 3).

chunkd promises never to modify a client's files, and one mistyped ``-o`` must not destroy every
round of a client: writing a checkpoint onto ``client_1_chunks.db`` used to succeed (exit 0).
Unless ``--force``, the output is refused when, after resolving symlinks, it is

* a chunkd database: a SQLite file, a path the config's ``db_path`` gives for some client, or a
  database the running daemon reports;
* a database's journal, WAL, shared-memory or lock file (``-journal``, ``-wal``, ``-shm``,
  ``.lock``) of any of those;
* any file inside a watched client directory: a directory under ``watch_root`` that
  ``client_dir_pattern`` matches, a ``[[clients]]`` directory, or one the daemon reports.

The check runs before anything is created, on the resolved path, so ``-o link-to-the-db`` is
refused like the database itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import string
from collections.abc import Iterable
from pathlib import Path

from chunkd.cli.offline import SQLITE_HEADER
from chunkd.errors import ChunkdError, RequestError

#: What SQLite and chunkd put beside a database file.
SIDECAR_SUFFIXES: tuple[str, ...] = ("-journal", "-wal", "-shm", ".lock")


def add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help="write even onto a chunkd database or into a watched client directory",
    )


def check_output(
    spec: str,
    args: argparse.Namespace,
    reported: Iterable[tuple[str | None, str | None]] = (),
) -> None:
    """RequestError (exit 2) if ``-o spec`` would land on a database or in a client directory.

    ``reported`` are ``(directory, database)`` pairs the daemon reports for its clients.
    Nothing is checked for ``-`` (stdout) or with ``--force``.
    """
    if spec == "-" or getattr(args, "force", False):
        return
    target = Path(os.path.abspath(spec)).resolve()
    reason = _protected(target, args, list(reported))
    if reason is not None:
        raise RequestError(
            f"refusing to write to {spec}: {reason}; chunkd never overwrites its databases or "
            "clients' files (use --force to write there anyway)"
        )


def _protected(
    target: Path, args: argparse.Namespace, reported: list[tuple[str | None, str | None]]
) -> str | None:
    databases, directories = _configured(args, target)
    for directory, db in reported:
        if directory:
            directories.append(Path(directory).resolve())
        if db:
            databases.append(Path(db).resolve())
    for directory in directories:
        if target.is_relative_to(directory):
            return f"it is inside the watched client directory {directory}"
    main = _database_of(target)
    if main is not None and (_is_sqlite(main) or main in databases):
        what = "a chunkd database" if main == target else f"a file of the database {main}"
        return f"it is {what}"
    return None


def _database_of(target: Path) -> Path | None:
    """``target`` itself, or the database a sidecar name belongs to."""
    for suffix in SIDECAR_SUFFIXES:
        if target.name.endswith(suffix) and len(target.name) > len(suffix):
            return target.with_name(target.name[: -len(suffix)])
    return target


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def _configured(args: argparse.Namespace, target: Path) -> tuple[list[Path], list[Path]]:
    """Databases and client directories the config names that ``target`` could hit."""
    from chunkd.cli.options import load_cli_settings

    try:
        settings = load_cli_settings(args)
    except ChunkdError:
        return [], []  # no usable config: the SQLite and daemon checks still apply
    databases: list[Path] = []
    directories: list[Path] = []
    for client in settings.clients:
        directory = client.dir.resolve()
        directories.append(directory)
        databases.append(settings.db_path_for(client.id, client.dir).resolve())
    root = settings.watch_root.resolve()
    if target.is_relative_to(root) and target != root:
        first = target.relative_to(root).parts[0]
        match = settings.client_dir_pattern.fullmatch(first)
        if match is not None and (root / first) != target:
            directories.append(root / first)
        if match is not None:
            with contextlib.suppress(ChunkdError):
                databases.append(settings.db_path_for(match.group("client"), root / first))
    if _matches_db_template(settings.db_path, target):
        databases.append(target)
    return databases, directories


def _matches_db_template(template: str, target: Path) -> bool:
    """Whether ``target`` has the shape ``db_path`` gives (``/var/lib/chunkd/{client}.db``)."""
    pattern = ""
    for literal, field, _, _ in string.Formatter().parse(template):
        pattern += re.escape(literal)
        if field == "client":
            pattern += r"[A-Za-z0-9_.-]{1,64}"
        elif field == "client_dir":
            pattern += r".+"
    return re.fullmatch(pattern, str(target)) is not None
