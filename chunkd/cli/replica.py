"""``--replica`` for ``chunkd restore`` and ``chunkd list``: read the bucket, no daemon needed.

``--replica s3://bucket/prefix`` names the bucket; a bare ``--replica`` takes the config's
``[replica]`` table. ``--endpoint``, ``--region`` and ``--host`` default to the config's values
(when the URL is the configured one) and then to AWS / this machine's host name. Credentials come
from boto3's standard chain, as for the daemon. The restore is
:func:`chunkd.replica.fetch.restore_from_replica`: every chunk's SHA-256 and the whole file's are
checked, and the output replaces its target only once complete (:mod:`chunkd.cli.output`).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import TYPE_CHECKING

from chunkd.cli import options
from chunkd.cli.render import format_bytes, format_table, print_json
from chunkd.errors import IntegrityError, NotFoundError, RequestError

if TYPE_CHECKING:  # the CLI imports no engine module until a command needs it
    from chunkd.config import ReplicaConfig
    from chunkd.restore import Write

FROM_CONFIG = ""


def add_options(parser: argparse.ArgumentParser) -> None:
    """``--replica [URL]``, ``--endpoint``, ``--region``, ``--host``."""
    group = parser.add_argument_group("replica (S3-compatible object storage; docs/REPLICA.md)")
    group.add_argument(
        "--replica",
        nargs="?",
        const=FROM_CONFIG,
        metavar="s3://BUCKET/PREFIX",
        help="read from the replica instead of the daemon (bare: the config's [replica] url)",
    )
    group.add_argument("--endpoint", metavar="URL", help="S3 endpoint (MinIO, SeaweedFS, ...)")
    group.add_argument("--region", metavar="NAME", help="S3 region")
    group.add_argument(
        "--host", metavar="NAME", help="the daemon host whose rounds to read (default: this one)"
    )


def _config(args: argparse.Namespace) -> ReplicaConfig:
    configured = options.load_cli_settings(args).replica
    url = args.replica or (configured.url if configured else "")
    if not url:
        raise RequestError("--replica: give s3://bucket/prefix (the config has no [replica] url)")
    if configured is None or configured.url != url.rstrip("/"):
        from chunkd.config import ReplicaConfig

        configured = ReplicaConfig(url, "", "", "", 0, 0, 3600.0, 3600.0)  # the TOML defaults
    return replace(
        configured,
        endpoint=args.endpoint if args.endpoint is not None else configured.endpoint,
        region=args.region if args.region is not None else configured.region,
        host=args.host if args.host is not None else configured.host,
    )


def _bucket_and_host(args: argparse.Namespace) -> tuple[object, str]:
    from chunkd.daemon.replication import replica_host
    from chunkd.replica.bucket import Bucket
    from chunkd.replica.layout import ReplicaURL, check_host

    config = _config(args)
    bucket = Bucket(ReplicaURL.parse(config.url), endpoint=config.endpoint, region=config.region)
    return bucket, check_host(replica_host(config))


def run_prune(args: argparse.Namespace) -> int:
    """``chunkd prune --replica``: this host's replica retention and the shared chunk sweep now.

    ``--keep N`` overrides ``replica_keep_rounds`` (else ``chunk_keep_rounds``); with
    ``--client`` only that client's rounds are considered for removal. ``--dry-run`` deletes
    nothing. The sweep waits for no one: it gives up (busy, exit 7) while another host uploads.
    """
    from chunkd.replica.prune import prune_replica

    config = _config(args)
    keep = args.keep
    if keep is None:
        keep = config.replica_keep_rounds or options.load_cli_settings(args).chunk_keep_rounds
    bucket, host = _bucket_and_host(args)
    result = prune_replica(
        bucket,  # type: ignore[arg-type]
        host=host,
        keep_rounds=lambda c: keep if args.client in (None, c) else 0,
        grace_s=config.gc_grace_s,
        dry_run=args.dry_run,
    )
    document = {"replica": str(bucket.url), "host": host, **result.log_fields()}  # type: ignore[attr-defined]
    if args.json:
        print_json(document)
        return 0
    verb = "would remove" if args.dry_run else "removed"
    rounds = ", ".join(
        f"client {c}: {', '.join(map(str, rs))}" for c, rs in result.rounds_removed.items()
    )
    print(
        f"{verb} rounds ({rounds or 'none'}); chunks: {result.chunks_removed} {verb} "
        f"({format_bytes(result.bytes_removed)}), {result.chunks_kept} kept, "
        f"{result.chunks_in_grace} in grace"
    )
    for q in result.quarantined:  # left in place (docs/REPLICA.md, "Quarantine")
        print(
            f"quarantined: host {q.host} client {q.client_id} round {q.round_num} "
            f"({q.key}, {format_bytes(q.size)}): {q.reason}"
        )
    if result.quarantined:
        print(f"{result.chunks_quarantined} chunks kept because a quarantined object may name them")
    return 0


def restore(args: argparse.Namespace, write: Write) -> dict[str, object]:
    """Restore ``--client``/``--round`` from the bucket through ``write``; the result document."""
    from chunkd.replica.fetch import list_rounds, restore_from_replica
    from chunkd.restore import unknown_client_message

    bucket, host = _bucket_and_host(args)
    try:
        done = restore_from_replica(bucket, host, args.client, args.round, write)  # type: ignore[arg-type]
    except NotFoundError:
        # issue 21: a mistyped id is told which ids the host has (one listing, only on error)
        known = {r.client_id for r in list_rounds(bucket, host=host)}  # type: ignore[arg-type]
        if args.client in known:
            raise
        where = f"on host {host} of replica {bucket.url} (no rounds there)"  # type: ignore[attr-defined]
        message = unknown_client_message(args.client, sorted(known), where, "clients with rounds")
        raise NotFoundError(message) from None
    return {
        "client": args.client,
        "round": done.round_num,
        "host": host,
        "transfer": "replica",
        "bytes": done.bytes_written,
        "sha256": done.file_sha256,
    }


def run_list(args: argparse.Namespace) -> int:
    """``chunkd list --replica``: every host and client in the bucket, or one client's rounds
    (on every host, or on ``--host``), each client's in the store's order (run, then round
    number), so ``latest`` is the newest written, as ``restore --replica`` answers it."""
    from chunkd.replica.bucket import ObjectTooLarge
    from chunkd.replica.fetch import list_rounds, read_manifest

    bucket, host = _bucket_and_host(args)
    only_host = host if args.host is not None else None  # else every host's
    rounds = list_rounds(bucket, host=only_host, client_id=args.client, versions=True)  # type: ignore[arg-type]
    if args.client is None:
        clients: dict[tuple[str, str], list[int]] = {}
        for r in rounds:  # newest last
            clients.setdefault((r.host, r.client_id), []).append(r.round_num)
        document: dict[str, object] = {
            "replica": str(bucket.url),  # type: ignore[attr-defined]
            "clients": [
                {"host": h, "client": c, "round_count": len(rs), "latest_round": rs[-1]}
                for (h, c), rs in sorted(clients.items())
            ],
        }
        rows = [
            [d["host"], d["client"], str(d["round_count"]), str(d["latest_round"])]
            for d in document["clients"]
        ]  # type: ignore[attr-defined]
        table = format_table(["host", "client", "rounds", "latest"], rows, right={2, 3})
    else:
        entries: list[dict[str, object]] = []
        for r in rounds:
            try:
                m = read_manifest(bucket, r.host, r.client_id, r.round_num)  # type: ignore[arg-type]
            except (IntegrityError, ObjectTooLarge) as e:  # listed in place, as the sweep keeps it
                entries.append(
                    {"host": r.host, "client": r.client_id, "round": r.round_num, "error": str(e)}
                )
                continue
            entries.append(
                {
                    "host": r.host,
                    "client": r.client_id,
                    "round": r.round_num,
                    "run": m.run,
                    "generation": m.generation,
                    "file_size": m.file_size,
                    "file_sha256": m.file_sha256,
                    "chunks": len(m.chunks),
                    "source_path": m.source_path,
                    "created_at": m.created_at,
                    "uploaded_at": m.uploaded_at,
                }
            )
        document = {"replica": str(bucket.url), "rounds": entries}  # type: ignore[attr-defined]
        rows = [
            [str(e["host"]), str(e["round"]), format_bytes(e["file_size"]), str(e["chunks"]),  # type: ignore[arg-type]
             str(e["file_sha256"])[:16], str(e["uploaded_at"])]
            if "error" not in e
            else [str(e["host"]), str(e["round"]), "-", "-", "unreadable", str(e["error"])[:60]]
            for e in entries
        ]  # fmt: skip
        headers = ["host", "round", "size", "chunks", "sha256", "uploaded"]
        table = format_table(headers, rows, right={1, 2, 3})
    if args.json:
        print_json(document)
    else:
        print(table if rows else "no rounds in the replica")
    return 0
