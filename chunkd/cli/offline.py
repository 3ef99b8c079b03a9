"""What the ``--db`` forms share: opening a database the user named, and whose it is.

``--db PATH`` works without the daemon, so the CLI must itself say what the daemon would: a file
that is not there is "not found" (exit 3), a file that is not a chunkd database is a bad request
(exit 2), never an internal error; and the client a database belongs to comes from its file name
as the config's ``db_path`` spells it (``client_{client}_chunks.db``), so ``--client`` cannot
mislabel it (issue 10, item 4).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from chunkd.errors import ChunkdError, NotFoundError, RequestError

if TYPE_CHECKING:
    from chunkd.store import ChunkStore

#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"


def check_database_file(path: Path) -> None:
    """NotFoundError if ``path`` does not exist, RequestError if it is not a SQLite database."""
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        raise NotFoundError(f"no database at {path}") from None
    except IsADirectoryError:
        raise RequestError(f"{path} is a directory, not a chunkd database") from None
    except PermissionError as e:
        raise ChunkdError(f"cannot read {path}: {e.strerror}") from None
    if header and header != SQLITE_HEADER:
        raise RequestError(f"{path} is not a chunkd database (not SQLite)")


def open_db(path: Path, *, writer: bool = False) -> ChunkStore:
    """The database ``--db`` names, checked first so that a wrong path gets the right status."""
    from chunkd.store import ChunkStore

    if not writer or path.exists():
        check_database_file(path)
    try:
        return ChunkStore.open_writer(path) if writer else ChunkStore.open_reader(path)
    except ChunkdError as e:
        if e.code == "internal" and "not a database" in str(e):
            raise RequestError(f"{path} is not a chunkd database: {e}") from None
        raise


def client_from_db_name(db: Path, db_path_template: str) -> str | None:
    """The ``{client}`` in ``db``'s file name by the ``db_path`` template's file name, if any."""
    name_template = os.path.basename(db_path_template)
    if "{client}" not in name_template or "{client_dir}" in name_template:
        return None
    head, _, tail = name_template.partition("{client}")
    if "{client}" in tail:
        return None
    match = re.fullmatch(
        re.escape(head) + r"(?P<client>[A-Za-z0-9_.-]{1,64})" + re.escape(tail), db.name
    )
    return match.group("client") if match else None


def client_for_db(args: argparse.Namespace, db: Path) -> str:
    """Whose database ``--db`` is: from its name (``db_path``), checked against ``--client``.

    RequestError if the two disagree (``restore --db client_1_chunks.db --client 2`` would
    otherwise print "restored client 2"). With no client in the name, ``--client`` if given,
    else the file name.
    """
    from chunkd.cli.options import load_cli_settings

    try:
        template = load_cli_settings(args).db_path
    except ChunkdError:
        template = "{client_dir}/client_{client}_chunks.db"
    named = client_from_db_name(db, template)
    given = getattr(args, "client", None)
    if named is not None and given is not None and given != named:
        raise RequestError(
            f"{db} is the database of client {named!r}, not {given!r} (drop --client, or give "
            "the right database)"
        )
    return named or given or db.name
