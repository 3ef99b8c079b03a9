"""``chunkd list``: clients, their rounds, sizes, chunk counts, dedup and compression ratios.

Without ``--client``: one line per client. With it: that client's summary and one line per
round. ``--db PATH`` reads one database directly (no daemon); the document is the same
(:mod:`chunkd.summary`), so ``--json`` output does not depend on where it came from.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from chunkd.cli import offline, options, replica
from chunkd.cli.client import DaemonClient
from chunkd.cli.render import format_bytes, format_ratio, format_table, print_json


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
        from chunkd.summary import summarize_store

        client_id = offline.client_for_db(args, args.db)
        client_dir, patterns = _client_dir_of(args, args.db)
        with offline.open_db(args.db) as store:
            entry = summarize_store(client_id, store, client_dir=client_dir, file_patterns=patterns)
        document = {"clients": [entry]}
    else:
        with DaemonClient.connect(options.socket_path(args)) as client:
            document = client.call("list", client=args.client)
    if args.json:
        print_json(document)
        return 0
    clients = document["clients"]
    assert isinstance(clients, list)
    if args.client is None and args.db is None:
        print(render_clients(clients))
    else:
        print("\n\n".join(render_client(entry) for entry in clients))
    return 0


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
    if not clients:
        return "no clients"
    rows = [
        [
            str(c["client"]),
            str(c["round_count"]),
            "-" if c["latest_round"] is None else str(c["latest_round"]),
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
        "CHECKPOINTS",
        "DATABASE",
        "RATIO",
        "DEDUP",
        "COMPRESSION",
        ".PTH LEFT",
    ]
    table = format_table(headers, rows, right={1, 2, 3, 4, 5, 6, 7, 8})
    return table + _files_note(clients)


def render_client(entry: dict[str, object]) -> str:
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
    summary += _files_note([entry])
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
