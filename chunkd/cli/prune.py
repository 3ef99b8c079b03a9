"""``chunkd prune``: apply retention now, or with ``--dry-run`` show what it would remove.

Through the daemon the client's lane does it (the database's only writer), with the daemon's
``chunk_keep_rounds`` and its restore leases. Offline, ``--db PATH`` prunes one database that no
daemon holds (a running daemon's lock makes it ``busy``, exit 7), keeping ``--keep N`` rounds or
else the config's ``chunk_keep_rounds``; a dry run only reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chunkd.cli import offline, options, replica
from chunkd.cli.client import DaemonClient
from chunkd.cli.render import format_bytes, print_json
from chunkd.errors import RequestError


def add_parser(commands: options.Commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "prune",
        parents=[common],
        help="apply retention now",
        description="Remove the rounds retention would remove (all but the newest N).",
    )
    p.add_argument("--client", type=options.client_id, metavar="ID", help="only this client")
    p.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    p.add_argument(
        "--db", type=Path, metavar="PATH", help="prune this database, without the daemon"
    )
    p.add_argument(
        "--keep",
        type=options.non_negative_int,
        metavar="N",
        help="with --db: keep the N newest rounds (0 keeps all; default: chunk_keep_rounds)",
    )
    replica.add_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.replica is not None:  # docs/REPLICA.md: the bucket's retention and chunk sweep
        return replica.run_prune(args)
    if args.db is not None:
        document = _prune_offline(args)
    else:
        if args.keep is not None:
            raise RequestError("--keep goes with --db; the daemon uses its chunk_keep_rounds")
        with DaemonClient.connect(options.socket_path(args)) as client:
            document = client.call("prune", client=args.client, dry_run=args.dry_run)
    if args.json:
        print_json(document)
    else:
        entries = document["clients"]
        assert isinstance(entries, list)
        print("\n".join(render_entry(entry) for entry in entries) or "no clients")
    return 0


def _prune_offline(args: argparse.Namespace) -> dict[str, object]:
    from chunkd.prune import prune_store
    from chunkd.summary import summarize_prune

    keep = args.keep if args.keep is not None else options.load_cli_settings(args).chunk_keep_rounds
    client_id = offline.client_for_db(args, args.db)
    with offline.open_db(args.db, writer=not args.dry_run) as store:
        result = prune_store(store, keep, dry_run=args.dry_run)
    entry = summarize_prune(client_id, result)
    return {"dry_run": args.dry_run, "clients": [entry]}


def render_entry(entry: dict[str, object]) -> str:
    removed = _rounds(entry["rounds_removed"])
    kept = _rounds(entry["rounds_kept"])
    held = _rounds(entry["rounds_held"])
    head = f"client {entry['client']}: "
    if entry["dry_run"]:
        text = f"would remove rounds {removed}" if removed != "-" else "nothing to remove"
        text += f"; keeps {kept}"
    elif removed == "-":
        text = f"nothing to remove; keeps {kept}"
    else:
        freed = format_bytes(_int(entry["bytes_removed"]))
        text = f"removed rounds {removed} ({entry['chunks_removed']} chunks, {freed}); keeps {kept}"
    if held != "-":
        text += f" (rounds {held} held by a restore until it ends)"
    return head + text


def _rounds(value: object) -> str:
    return ", ".join(str(r) for r in value) if isinstance(value, list) and value else "-"


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
