"""``chunkd forget``: remove one stored round version, named by round (and generation).

For what retention cannot fix: a mis-numbered file (``model_240605.pth`` is round 240605 and
would stay ``latest`` forever) or a bad rewrite. Admins only through the daemon (the client's lane
does it, and logs ``round.forgotten``); offline, ``--db PATH`` forgets in a database no daemon
holds. Without ``--generation`` the round's current version goes and its newest earlier
generation, if any, becomes current again. ``--dry-run`` only says what would go.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chunkd.cli import offline, options
from chunkd.cli.client import DaemonClient
from chunkd.cli.render import format_bytes, print_json


def add_parser(commands: options.Commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "forget",
        parents=[common],
        help="remove one stored round version",
        description=(
            "Remove one stored version of a round (its current one, or --generation G). "
            "The round's newest earlier generation, if any, becomes current again."
        ),
    )
    p.add_argument("--client", type=options.client_id, metavar="ID", required=True)
    p.add_argument("--round", type=options.non_negative_int, metavar="N", required=True)
    p.add_argument(
        "--generation",
        type=options.non_negative_int,
        metavar="G",
        help="an earlier generation of the round (see `chunkd list --client ID`)",
    )
    p.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    p.add_argument(
        "--db", type=Path, metavar="PATH", help="forget in this database, without the daemon"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.db is not None:
        entry = _forget_offline(args)
    else:
        with DaemonClient.connect(options.socket_path(args)) as client:
            entry = client.call(
                "forget",
                client=args.client,
                round=args.round,
                generation=args.generation,
                dry_run=args.dry_run,
            )
    if args.json:
        print_json(entry)
    else:
        print(render(entry))
    return 0


def _forget_offline(args: argparse.Namespace) -> dict[str, object]:
    from chunkd.forget import forget_version
    from chunkd.summary import summarize_forget

    with offline.open_db(args.db, writer=not args.dry_run) as store:
        result = forget_version(store, args.round, args.generation, dry_run=args.dry_run)
    return summarize_forget(offline.client_for_db(args, args.db), result)


def render(entry: dict[str, object]) -> str:
    what = f"round {entry['round']} generation {entry['generation']} of client {entry['client']}"
    origin = f" (sha256 {str(entry['sha256'])[:16]}…, from {entry['source_path'] or 'no file'})"
    then = ""
    if entry["generation_now_current"] is not None:
        then = f"; generation {entry['generation_now_current']} is current again"
    elif entry["was_current"]:
        then = f"; round {entry['round']} is no longer stored"
    if entry["dry_run"]:
        return f"would forget {what}{origin}{then}"
    freed = format_bytes(int(str(entry["bytes_removed"])))
    return f"forgot {what}{origin}{then}; {entry['chunks_removed']} chunks, {freed} freed"
