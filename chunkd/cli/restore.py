"""``chunkd restore``: a stored round, byte-identical, to a file or stdout.

Through the daemon (default): the output is opened here, with the caller's own permissions, and
its descriptor passed to the daemon, which writes the checkpoint into it (``--transfer fd``); or
the daemon streams frames that are written here (``--transfer frames``, for a socket that cannot
carry descriptors). Offline (``--db PATH``): the same :func:`chunkd.restore.restore_round`, run
here on the database. Either way a file output only replaces its target once the bytes on disk
hash to the round's SHA-256 (:mod:`chunkd.cli.output`).
"""

from __future__ import annotations

import argparse
import errno
import os
import select
from dataclasses import dataclass
from pathlib import Path

from chunkd.cli import guard, offline, options, replica
from chunkd.cli.client import DaemonClient
from chunkd.cli.output import STDOUT, Output
from chunkd.cli.render import Progress, format_bytes, print_json
from chunkd.errors import ChunkdError, NotFoundError, RequestError
from chunkd.protocol import TRANSFER_FD


@dataclass(frozen=True, slots=True)
class Transfer:
    """What a restore or export wrote: its result document and the two figures checked."""

    result: dict[str, object]
    bytes_written: int
    sha256: str
    #: The round's current generation, when known: the success line says whether the version
    #: written was the current one (issue 21).
    current_generation: int | None = None

    @classmethod
    def of(cls, result: dict[str, object], current_generation: int | None = None) -> Transfer:
        """From a result with ``bytes`` and ``sha256``; ChunkdError if the daemon left them out."""
        size, digest = result.get("bytes"), result.get("sha256")
        if not isinstance(size, int) or not isinstance(digest, str):
            raise ChunkdError("the daemon's answer has no byte count or SHA-256")
        return cls(result, size, digest, current_generation)


#: What ``restore`` can do when no daemon answers.
_OFFLINE = "`chunkd restore --db PATH` restores from a database without the daemon"


def add_parser(commands: options.Commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "restore",
        parents=[common],
        help="write a stored round, byte-identical",
        description="Write a stored round of a client as the original .pth, byte for byte.",
    )
    options.add_client_and_round(p, required=False)
    p.add_argument(
        "-o",
        "--output",
        default=STDOUT,
        metavar="FILE|-",
        help="where to write (default: - for stdout, which must not be a terminal)",
    )
    p.add_argument(
        "--db",
        type=Path,
        metavar="PATH",
        help="restore straight from this database, without the daemon",
    )
    options.add_generation(p)
    options.add_transfer(p)
    replica.add_options(p)
    guard.add_force(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.json and args.output == STDOUT:
        raise RequestError("--json prints on stdout: use it with -o FILE, not -o -")
    if args.db is None and args.client is None:
        raise RequestError("--client is required (or --db PATH to restore from a database)")
    if args.replica is not None and args.generation is not None:
        raise RequestError(
            "--generation does not go with --replica: the replica keeps only the current version "
            "of each round"
        )
    if args.db is not None:
        args.client = offline.client_for_db(args, args.db)
    guard.check_output(args.output, args)  # before anything is created next to the target
    with Output.open(args.output) as out, Progress("restore") as progress:
        if args.db is not None:
            done = _restore_offline(args, out, progress)
        elif args.replica is not None:  # docs/REPLICA.md: from the bucket, no daemon
            done = Transfer.of(replica.restore(args, out.write))
        else:
            done = restore_through_daemon(args, "restore", out, progress, _OFFLINE)
        progress.update(done.bytes_written, force=True)
        out.commit(done.sha256, done.bytes_written)
    _report(args, done, out)
    return 0


def _restore_offline(args: argparse.Namespace, out: Output, progress: Progress) -> Transfer:
    from chunkd.restore import restore_round

    with offline.open_db(args.db) as store:
        stored = store.round_numbers()
        round_num = args.round if args.round is not None else store.latest_round()
        if round_num not in stored:
            raise NotFoundError(not_stored_message(round_num, stored, f"in {args.db}"))
        version = store.get_round(round_num, args.generation)
        current = store.get_round(round_num).generation
        progress.total = version.file_size
        written = 0

        def write(data: bytes | memoryview) -> None:
            nonlocal written
            out.write(data)
            written += len(data)
            progress.update(written)

        restored = restore_round(store, round_num, write, generation=args.generation)
    result = {
        "client": args.client,
        "round": round_num,
        "generation": version.generation,
        "transfer": "offline",
    }
    return Transfer.of(
        {**result, "bytes": restored.bytes_written, "sha256": restored.file_sha256}, current
    )


def not_stored_message(round_num: int, stored: list[int], where: str) -> str:
    """``round 99 is not stored in X; stored rounds: 1, 2, 5`` (issue 10: say what is there)."""
    if not stored:
        return f"round {round_num} is not stored {where}; no rounds are stored"
    shown = ", ".join(map(str, stored[-20:]))
    more = f" (and {len(stored) - 20} older)" if len(stored) > 20 else ""
    return f"round {round_num} is not stored {where}; stored rounds: {shown}{more}"


def _stored_rounds(client: DaemonClient, client_id: str) -> dict[int, dict[str, object]] | None:
    """The client's stored rounds as ``list`` reports them, by round number (for the bar's
    total, "not stored" messages and the current generation); None when the daemon does not
    say."""
    try:
        listed = client.call("list", client=client_id)
    except ChunkdError:
        return None
    entries = listed.get("clients")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        return None
    rounds = entries[0].get("rounds")
    if not isinstance(rounds, list):
        return None
    listed_rounds = [r for r in rounds if isinstance(r, dict) and isinstance(r.get("round"), int)]
    return {r["round"]: r for r in listed_rounds}


def _protected_paths(client: DaemonClient) -> list[tuple[str | None, str | None]]:
    """Each client's directory and database as the daemon reports them (for :mod:`guard`)."""
    try:
        clients = client.call("status").get("clients")
    except ChunkdError:
        return []
    if not isinstance(clients, dict):
        return []
    return [
        (str(c.get("dir") or "") or None, str(c.get("db") or "") or None)
        for c in clients.values()
        if isinstance(c, dict)
    ]


def restore_through_daemon(
    args: argparse.Namespace,
    cmd: str,
    out: Output,
    progress: Progress,
    offline_hint: str | None = None,
    **fields: object,
) -> Transfer:
    """Run ``restore`` or ``export`` on the daemon into ``out``; what the daemon reported."""
    request = {"client": args.client, "round": args.round, **fields}
    if getattr(args, "generation", None) is not None:
        request["generation"] = args.generation
    with DaemonClient.connect(options.socket_path(args), offline=offline_hint) as client:
        guard.check_output(args.output, args, _protected_paths(client))
        stored = _stored_rounds(client, args.client)
        if stored:
            wanted = args.round if args.round is not None else max(stored)
            size = stored.get(wanted, {}).get("file_size")
            progress.total = size if isinstance(size, int) and size else None
        try:
            done = _transfer(args, client, cmd, out, progress, request)
        except NotFoundError as e:
            if stored is not None and args.round is not None and args.round not in stored:
                where = f"for client {args.client}"
                raise NotFoundError(not_stored_message(args.round, sorted(stored), where)) from e
            raise
    served = done.result.get("round")
    entry = stored.get(served) if stored and isinstance(served, int) else None
    current = entry.get("generation") if entry else None
    return Transfer.of(done.result, current if isinstance(current, int) else None)


def _transfer(
    args: argparse.Namespace,
    client: DaemonClient,
    cmd: str,
    out: Output,
    progress: Progress,
    request: dict[str, object],
) -> Transfer:
    if args.transfer == TRANSFER_FD:

        def on_wait() -> None:
            landed = out.bytes_so_far()
            progress.update(landed)
            out.start_writeback(landed)  # the disk writes while the daemon decodes
            _stop_if_output_closed(out)

        try:
            return Transfer.of(client.restore_to_fd(cmd, out.fd, on_wait=on_wait, **request))
        except ChunkdError:
            _stop_if_output_closed(out)  # the daemon met EPIPE on our stdout: say so
            raise
    received = 0

    def sink(payload: memoryview) -> None:
        nonlocal received
        out.write(payload)
        received += len(payload)
        progress.update(received)

    def on_header(header: dict[str, object]) -> None:
        size = header.get("bytes")
        progress.total = size if isinstance(size, int) else None

    stream = client.restore_frames(cmd, sink, on_header=on_header, **request)
    return Transfer.of({**stream.header, "bytes": stream.bytes_received, "sha256": stream.sha256})


def _stop_if_output_closed(out: Output) -> None:
    """With ``-o -`` into a pipe whose reader has gone, stop like any writer would (EPIPE)."""
    if out.is_file:
        return
    poller = select.poll()
    poller.register(out.fd, 0)  # POLLERR and POLLHUP are always reported
    if any(event & select.POLLERR for _, event in poller.poll(0)):
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def _report(args: argparse.Namespace, done: Transfer, out: Output) -> None:
    if args.json:
        print_json({**done.result, "output": str(out.target) if out.target else STDOUT})
    elif out.target is not None:
        print(
            f"restored client {done.result['client']} round {done.result['round']}"
            f"{version_phrase(args, done)} to {out.target} ({format_bytes(done.bytes_written)}, "
            f"sha256 {done.sha256[:16]}…)"
        )


def version_phrase(args: argparse.Namespace, done: Transfer) -> str:
    """`` generation 0 (an earlier version; the current one is generation 2)`` when a version
    was asked for, else nothing: a success line must not pass an earlier version off as the
    round (issue 21)."""
    generation = done.result.get("generation")
    if args.generation is None or not isinstance(generation, int):
        return ""
    current = done.current_generation
    if current is None:
        return f" generation {generation}"
    if generation == current:
        return f" generation {generation} (the current version)"
    return f" generation {generation} (an earlier version; the current one is generation {current})"
