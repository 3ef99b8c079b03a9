"""``chunkd ingest PATH --client ID`` (or ``--db PATH``): ingest one checkpoint file now.

Through the daemon, the absolute path is sent and the client's lane ingests it (no settle delay);
the daemon only reads inside the client's directory. Offline, ``--db PATH`` ingests into that
database here, with the chunking, compression, ``delta`` and ``round_regex`` settings of the
config, as the daemon would. A file the daemon rejected earlier (and that has not changed since)
is reported as a refusal with its reason and exit status 4, never as "nothing changed".
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chunkd.cli import offline, options
from chunkd.cli.client import DaemonClient, OnWait, follow_status
from chunkd.cli.render import Progress, format_bytes, print_json
from chunkd.errors import CheckpointError, ChunkdError, RequestError

#: ``outcome`` values of an ingest answer (chunkd.ingest's, without importing the engine here).
OUTCOME_SEEN = "seen"
OUTCOME_DUPLICATE = "duplicate"


def add_parser(commands: options.Commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "ingest",
        parents=[common],
        help="ingest one checkpoint file now",
        description="Store one checkpoint file as a round of a client.",
    )
    p.add_argument("path", type=Path, metavar="PATH", help="the .pth file")
    p.add_argument(
        "--client",
        type=options.client_id,
        metavar="ID",
        help="the client whose watched directory holds PATH (with --db: taken from the "
        "database's name)",
    )
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
    if args.db is None and args.client is None:
        raise RequestError(
            "--client is required: the client whose watched directory holds the file (or --db "
            "PATH to store it in a database without the daemon)"
        )
    if args.db is not None:
        document = _ingest_offline(args, path)
    else:
        socket_path = options.socket_path(args)
        size = path.stat().st_size if path.is_file() else None
        offline = "`chunkd ingest PATH --db DATABASE` stores it without the daemon"
        with (
            DaemonClient.connect(socket_path, offline=offline) as client,
            Progress("ingest", size) as bar,
        ):
            document = client.call(
                "ingest",
                client=args.client,
                path=str(path),
                round=args.round,
                on_wait=_follow(socket_path, path, bar) if bar.enabled else None,
            )
            if _was_refused(document):
                raise CheckpointError(_refusal(document, _daemon_reason(client, args.client, path)))
    if _was_refused(document):
        raise CheckpointError(_refusal(document, None))
    if args.json:
        print_json(document)
    else:
        print(render_result(document))
    return 0


def _ingest_offline(args: argparse.Namespace, path: Path) -> dict[str, object]:
    """Ingest here, with the config's chunking, compression, delta and round rules."""
    from chunkd.ingest import IngestOptions, ingest_file
    from chunkd.summary import summarize_ingest

    settings = options.load_cli_settings(args)
    ingest_options = IngestOptions(
        chunk_num=settings.chunk_num,
        max_chunk_bytes=settings.max_chunk_bytes,
        compression=settings.compression,
        delta=settings.delta,
        round_regex=settings.round_regex,
    )
    client_id = offline.client_for_db(args, args.db)
    size = path.stat().st_size if path.is_file() else None
    with offline.open_db(args.db, writer=True) as store, Progress("ingest", size) as bar:
        result = ingest_file(
            path,
            store,
            ingest_options,
            round_num=args.round,
            progress=lambda done, total: bar.update(done),
        )
    return summarize_ingest(client_id, result)


def _follow(socket_path: Path, path: Path, bar: Progress) -> OnWait:
    """While the daemon ingests, how far this file has got (status's ``ingesting``)."""

    def on_item(item: dict[str, object]) -> bool:
        if item.get("path") != str(path):
            return False
        done = item.get("bytes_done")
        bar.update(done if isinstance(done, int) else 0)
        return True

    return follow_status(socket_path, "ingesting", on_item)


def _was_refused(document: dict[str, object]) -> bool:
    """A file taken before and not stored then (rejected, or failed) comes back ``seen`` with
    no round: that is a refusal, not "nothing changed" (issue 10, item 3)."""
    return document.get("outcome") == OUTCOME_SEEN and document.get("round") is None


def _refusal(document: dict[str, object], reason: str | None) -> str:
    why = f": {reason}" if reason else ""
    return (
        f"{document.get('path')} was not stored: the daemon rejected this version of the file "
        f"when it first took it{why}. Change or replace the file and ingest it again; "
        "`chunkd status` and the checkpoint.rejected log line say why"
    )


def _daemon_reason(client: DaemonClient, client_id: str, path: Path) -> str | None:
    """The reason the daemon recorded for ``path`` (``chunkd status``'s last error), if any."""
    try:
        clients = client.call("status").get("clients")
    except ChunkdError:
        return None
    entry = clients.get(client_id) if isinstance(clients, dict) else None
    error = entry.get("last_error") if isinstance(entry, dict) else None
    if isinstance(error, dict) and error.get("path") == str(path):
        return str(error.get("error") or "") or None
    return None


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
