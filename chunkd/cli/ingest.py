"""``chunkd ingest PATH --client ID``: ingest one checkpoint file now.

Through the daemon, the absolute path is sent and the client's lane ingests it (no settle delay);
the daemon only reads inside the client's directory. Offline, ``--db PATH`` ingests into that
database here, with the chunking settings of the config, as the daemon would.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chunkd.cli import options
from chunkd.cli.client import DaemonClient
from chunkd.cli.render import format_bytes, print_json
from chunkd.ingest import OUTCOME_DUPLICATE, OUTCOME_SEEN, IngestOptions, ingest_file
from chunkd.store import ChunkStore
from chunkd.summary import summarize_ingest


def add_parser(commands: options.Commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "ingest",
        parents=[common],
        help="ingest one checkpoint file now",
        description="Store one checkpoint file as a round of a client.",
    )
    p.add_argument("path", type=Path, metavar="PATH", help="the .pth file")
    p.add_argument("--client", required=True, type=options.client_id, metavar="ID")
    p.add_argument(
        "--round",
        type=options.round_number,
        metavar="N",
        help="round number (default: from the file name or contents)",
    )
    p.add_argument(
        "--db", type=Path, metavar="PATH", help="ingest into this database, without the daemon"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = args.path.absolute()
    if args.db is not None:
        settings = options.load_cli_settings(args)
        ingest_options = IngestOptions(
            chunk_num=settings.chunk_num,
            max_chunk_bytes=settings.max_chunk_bytes,
            compression=settings.compression,
            round_regex=settings.round_regex,
        )
        with ChunkStore.open_writer(args.db) as store:
            result = ingest_file(path, store, ingest_options, round_num=args.round)
        document = summarize_ingest(args.client, result)
    else:
        with DaemonClient.connect(options.socket_path(args)) as client:
            document = client.call("ingest", client=args.client, path=str(path), round=args.round)
    if args.json:
        print_json(document)
    else:
        print(render_result(document))
    return 0


def render_result(doc: dict[str, object]) -> str:
    head = f"client {doc['client']} round {doc['round']}"
    if doc["outcome"] == OUTCOME_SEEN:
        return f"{head}: {doc['path']} was already taken; nothing changed"
    if doc["outcome"] == OUTCOME_DUPLICATE:
        return f"{head}: already stored with the same SHA-256; nothing changed"
    size = format_bytes(_int(doc["bytes_in"]))
    added = format_bytes(_int(doc["bytes_new"]))
    dedup = doc.get("dedup_ratio")
    known = f", {dedup:.0%} of its tensor bytes already stored" if isinstance(dedup, float) else ""
    return (
        f"{head}: {doc['outcome']} {size} in {doc['chunks']} chunks, {doc['chunks_new']} new "
        f"({added} added{known})"
    )


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
