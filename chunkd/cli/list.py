"""``chunkd list``: clients, their rounds, sizes, chunk counts, dedup and compression ratios.

Without ``--client``: one line per client, printed as it is rendered (10,000 clients are 10,000
lines, not one string built first), then a totals line. With it: that client's summary and one
line per round. ``--db PATH`` reads one database directly (no daemon); the document is the same
(:mod:`chunkd.summary`), so ``--json`` output does not depend on where it came from.

Every client shows what its earlier generations (versions of rewritten rounds kept until
retention removes them) cost. A damaged database is listed as damaged with the reason, and
``list`` then exits 5 (``integrity``, as ``verify`` does) after printing everything else; a
database that could not be read for another reason (busy) exits with that error's status. A
client whose directory disappeared is listed as removed, with the rounds its database held.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from chunkd.cli import offline, options, replica
from chunkd.cli.client import DaemonClient
from chunkd.cli.render import (
    format_bytes,
    format_ratio,
    format_table,
    print_json,
    removed_text,
    table_lines,
)
from chunkd.errors import CLASS_BY_CODE, ChunkdError, IntegrityError, RequestError


def add_parser(commands: options.Commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "list",
        parents=[common],
        help="clients, rounds, sizes and ratios",
        description="List clients and their stored rounds.",
    )
    p.add_argument(
        "--client", type=options.client_id, metavar="ID", help="show this client's rounds"
    )
    p.add_argument("--db", type=Path, metavar="PATH", help="read this database, without the daemon")
    replica.add_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.replica is not None:  # docs/REPLICA.md
        return replica.run_list(args)
    if args.db is not None:
        document = {"clients": [_list_db(args, args.db)]}
    else:
        offline = "`chunkd list --db PATH` reads a database without the daemon"
        with DaemonClient.connect(options.socket_path(args), offline=offline) as client:
            document = client.call("list", client=args.client)
    clients = document["clients"]
    assert isinstance(clients, list)
    if args.json:
        print_json(document)
    elif args.client is None and args.db is None:
        for line in client_lines(clients):  # as rendered: 10,000 clients are 10,000 lines
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    else:
        print("\n\n".join(render_client(entry) for entry in clients))
    raise_for_unreadable(clients)
    return 0


def _list_db(args: argparse.Namespace, db: Path) -> dict[str, object]:
    """``--db``: the entry of one database, or of a damaged one (then the exit status is 5).

    A file that is not SQLite at all is a wrong path (exit 2, as for every ``--db`` form) unless
    its name is a chunkd database's by the config's ``db_path``: then it is damaged.
    """
    from chunkd.summary import is_damage, summarize_store, summarize_unreadable

    client_id = offline.client_for_db(args, db)
    client_dir, patterns = _client_dir_of(args, db)
    try:
        with offline.open_db(db) as store:
            return summarize_store(client_id, store, client_dir=client_dir, file_patterns=patterns)
    except RequestError as e:
        if not _named_as_database(args, db):
            raise
        return summarize_unreadable(client_id, db, e)
    except ChunkdError as e:
        if (e.code == "not_found" and not db.exists()) or not is_damage(e):
            raise
        return summarize_unreadable(client_id, db, e)


def _named_as_database(args: argparse.Namespace, db: Path) -> bool:
    try:
        template = options.load_cli_settings(args).db_path
    except ChunkdError:
        template = "{client_dir}/client_{client}_chunks.db"
    return offline.client_from_db_name(db, template) is not None


def raise_for_unreadable(clients: list[dict[str, object]]) -> None:
    """After the listing: exit 5 if a database is damaged, else the status of the first
    database that could not be read (busy: 7), else nothing."""
    damaged = [str(c["client"]) for c in clients if c.get("damaged")]
    if damaged:
        raise IntegrityError(
            f"{len(damaged)} damaged database(s): client {', '.join(damaged)} (see the listing)"
        )
    for entry in clients:
        error = entry.get("error")
        if isinstance(error, dict):
            cls = CLASS_BY_CODE.get(str(error.get("code")), ChunkdError)
            raise cls(str(error.get("message")))


def _client_dir_of(args: argparse.Namespace, db: Path) -> tuple[Path | None, tuple[str, ...]]:
    """The client directory beside ``--db`` when ``db_path`` puts databases there."""
    from chunkd.errors import ChunkdError

    try:
        settings = options.load_cli_settings(args)
    except ChunkdError:
        return None, ()
    if settings.db_path.startswith("{client_dir}/") and settings.db_path.count("/") == 1:
        return db.absolute().parent, tuple(settings.file_patterns)
    return None, ()


def render_clients(clients: list[dict[str, object]]) -> str:
    """One line per client; RATIO is checkpoint bytes over the database's bytes on disk (the
    headline), = DEDUP x COMPRESSION; .PTH LEFT is what is still on disk beside it."""
    return "\n".join(client_lines(clients))


def client_lines(clients: list[dict[str, object]]) -> Iterator[str]:
    """:func:`render_clients` line by line: the table, a totals line when there are several
    clients, then the notes (problems, earlier generations, files left)."""
    if not clients:
        yield "no clients"
        return
    rows = [
        [
            str(c["client"]),
            _rounds_cell(c),
            "-" if c["latest_round"] is None else str(c["latest_round"]),
            _earlier_cell(c),
            format_bytes(_int(c["file_bytes"])),
            format_bytes(_int(c.get("db_bytes"))),
            format_ratio(_float(c.get("disk_ratio"))),
            format_ratio(_float(c["dedup_ratio"])),
            format_ratio(_float(c["compression_ratio"])),
            _files_left(c),
        ]
        for c in clients
    ]
    headers = [
        "CLIENT",
        "ROUNDS",
        "LATEST",
        "EARLIER GENS",
        "CHECKPOINTS",
        "DATABASE",
        "RATIO",
        "DEDUP",
        "COMPRESSION",
        ".PTH LEFT",
    ]
    yield from table_lines(headers, rows, right={1, 2, 3, 4, 5, 6, 7, 8, 9})
    if len(clients) > 1:
        yield _totals_line(clients)
    notes = _problems_note(clients) + _generations_note(clients) + _files_note(clients)
    yield from notes.splitlines()[1:]


def _totals_line(clients: list[dict[str, object]]) -> str:
    """``10000 clients: 20000 rounds, 1.2 GiB of checkpoints in 310 MiB of databases (3.96x)``."""
    rounds = sum(_int(c.get("round_count")) for c in clients)
    files = sum(_int(c.get("file_bytes")) for c in clients)
    dbs = sum(_int(c.get("db_bytes")) for c in clients)
    ratio = format_ratio(files / dbs if files and dbs else None)
    problems = sum(1 for c in clients if c.get("error"))
    line = (
        f"{len(clients)} clients: {rounds} rounds, {format_bytes(files)} of checkpoints in "
        f"{format_bytes(dbs)} of databases (ratio {ratio})"
    )
    return line + (f"; {problems} cannot be read (below)" if problems else "")


def _rounds_cell(entry: dict[str, object]) -> str:
    """The round count, or what is wrong instead: never a damaged or removed client as 0."""
    if entry.get("damaged"):
        return "DAMAGED"
    if entry.get("error"):
        return "UNREADABLE"
    removed = entry.get("removed")
    if isinstance(removed, dict) and removed.get("db_deleted"):
        return "REMOVED"
    return str(entry["round_count"])


def _earlier_cell(entry: dict[str, object]) -> str:
    """``3 / 12.0 MiB``: earlier generations and the chunk bytes only they need."""
    count = _int(entry.get("generation_count"))
    if not count:
        return "0"
    return f"{count} / {format_bytes(_int(entry.get('generation_stored_bytes')))}"


def _problems_note(entries: list[dict[str, object]]) -> str:
    """One line per damaged, unreadable or removed client, below the table."""
    lines = []
    for entry in entries:
        client = entry["client"]
        damaged = entry.get("damaged")
        error = entry.get("error")
        removed = entry.get("removed")
        if isinstance(damaged, dict):
            lines.append(f"client {client}: database DAMAGED: {damaged.get('reason')}")
        elif isinstance(error, dict):
            lines.append(f"client {client}: {error.get('message')}")
        if isinstance(removed, dict):
            lines.append(f"client {client}: {removed_text(removed)}")
    return "".join("\n" + textwrap.fill(line, width=100) for line in lines)


def _generations_note(entries: list[dict[str, object]]) -> str:
    """What earlier generations cost, when any client keeps some."""
    count = sum(_int(e.get("generation_count")) for e in entries)
    if not count:
        return ""
    stored = sum(_int(e.get("generation_stored_bytes")) for e in entries)
    note = (
        f"{count} earlier generation(s) of rewritten rounds (reruns, resumed jobs) hold "
        f"{format_bytes(stored)} of chunk data no current round needs; retention keeps at most "
        "chunk_keep_rounds of them per client (chunkd list --client ID shows them)."
    )
    return "\n" + textwrap.fill(note, width=100)


def render_client(entry: dict[str, object]) -> str:
    removed = entry.get("removed")
    if entry.get("error") or (isinstance(removed, dict) and removed.get("db_deleted")):
        return _problems_note([entry]).lstrip("\n")  # no figures: there is no database to read
    rounds = entry["rounds"]
    assert isinstance(rounds, list)
    summary = (
        f"client {entry['client']}: {len(rounds)} rounds, "
        f"{format_bytes(_int(entry['file_bytes']))} of checkpoints in a "
        f"{format_bytes(_int(entry.get('db_bytes')))} database "
        f"(ratio {format_ratio(_float(entry.get('disk_ratio')))} = "
        f"dedup {format_ratio(_float(entry['dedup_ratio']))} x "
        f"compression and overhead {format_ratio(_float(entry['compression_ratio']))}; "
        f"{format_bytes(_int(entry['stored_bytes']))} of chunk data in {entry['chunks']} chunks)"
    )
    count = _int(entry.get("generation_count"))
    if count:
        files = format_bytes(_int(entry.get("generation_file_bytes")))
        stored = format_bytes(_int(entry.get("generation_stored_bytes")))
        summary += (
            f"\n{count} earlier generation(s): {files} of checkpoints, {stored} of chunk data "
            "that no current round needs"
        )
    summary += _problems_note([entry]) + _files_note([entry])
    if not rounds:
        return summary
    earlier = entry.get("generations") or []
    assert isinstance(earlier, list)
    versions = sorted(
        [(r, True) for r in rounds] + [(r, False) for r in earlier],
        key=lambda v: (v[0]["round"], v[0].get("generation", 0)),
    )
    rows = [
        [
            str(r["round"]),
            str(r.get("generation", 0)) + ("" if current else " (earlier)"),
            format_bytes(_int(r["file_size"])),
            str(r["chunks"]),
            format_bytes(_int(r["new_bytes"])),
            str(r["created_at"]),
            str(r["sha256"])[:16],
        ]
        for r, current in versions
    ]
    headers = ["ROUND", "GEN", "SIZE", "CHUNKS", "NEW", "CREATED", "SHA256"]
    table = format_table(headers, rows, right={0, 2, 3, 4})
    if earlier:
        table += (
            "\nearlier generations of rewritten rounds stay until retention removes them:"
            " chunkd restore --client ID --round N --generation G"
        )
    return summary + "\n" + table


def _files_left(entry: dict[str, object]) -> str:
    count = entry.get("files_on_disk")
    if not isinstance(count, int):
        return "-"
    return f"{count} ({format_bytes(_int(entry.get('files_on_disk_bytes')))})" if count else "0"


def _files_note(entries: list[dict[str, object]]) -> str:
    """Say plainly that checkpoint files left in place still use their own space."""
    counts = [e.get("files_on_disk") for e in entries]
    files = sum(c for c in counts if isinstance(c, int))
    if not files:
        return ""
    size = sum(_int(e.get("files_on_disk_bytes")) for e in entries)
    note = (
        f"{files} checkpoint file(s), {format_bytes(size)}, are still in the client "
        "directories beside the databases: with delete_after_ingest = false chunkd adds to the "
        "disk use rather than replacing them."
    )
    return "\n" + textwrap.fill(note, width=100)


def _int(value: object) -> int:
    return int(value) if isinstance(value, (int, float)) else 0


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
