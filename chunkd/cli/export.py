"""``chunkd export``: the named tensors of a stored round as a safetensors file.

Through the daemon, exactly like ``restore`` (the daemon writes into the descriptor passed here,
or streams frames); offline (``--db``), :func:`chunkd.export.export_safetensors` runs here. The
output replaces its target only when complete (:mod:`chunkd.cli.output`). ``--format`` defaults to
safetensors, the only format; ``--generation G`` exports an earlier version of a rewritten round,
as ``restore --generation`` restores it (issue 21).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from chunkd.cli import guard, offline, options
from chunkd.cli.output import STDOUT, Output
from chunkd.cli.render import Progress, format_bytes, print_json
from chunkd.cli.restore import (
    Transfer,
    not_stored_message,
    restore_through_daemon,
    version_phrase,
)
from chunkd.errors import NotFoundError, RequestError
from chunkd.protocol import EXPORT_FORMATS

_COPY_BLOCK_BYTES = 1 << 20


def add_parser(commands: options.Commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "export",
        parents=[common],
        help="write the named tensors of a round (safetensors)",
        description="Write the named tensors of a stored round in another format.",
    )
    options.add_client_and_round(p, required=False)
    p.add_argument(
        "--format",
        default=EXPORT_FORMATS[0],
        choices=EXPORT_FORMATS,
        dest="export_format",
        help=f"the output format (default: {EXPORT_FORMATS[0]}, the only one)",
    )
    p.add_argument("-o", "--output", required=True, metavar="FILE|-")
    options.add_generation(p)
    p.add_argument(
        "--db",
        type=Path,
        metavar="PATH",
        help="export straight from this database, without the daemon",
    )
    options.add_transfer(p)
    guard.add_force(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.json and args.output == STDOUT:
        raise RequestError("--json prints on stdout: use it with -o FILE, not -o -")
    if args.db is None and args.client is None:
        raise RequestError("--client is required (or --db PATH to export from a database)")
    if args.db is not None:
        args.client = offline.client_for_db(args, args.db)
    guard.check_output(args.output, args)  # before anything is created next to the target
    with Output.open(args.output) as out, Progress("export") as progress:
        if args.db is not None:
            done = _export_offline(args, out, progress)
        else:
            done = restore_through_daemon(
                args,
                "export",
                out,
                progress,
                "`chunkd export --db PATH` exports from a database without the daemon",
                format=args.export_format,
            )
        progress.total = done.bytes_written  # the round's size was only an estimate of it
        progress.update(done.bytes_written, force=True)
        out.commit(done.sha256, done.bytes_written)
    if args.json:
        print_json({**done.result, "output": str(out.target) if out.target else STDOUT})
    elif out.target is not None:
        print(
            f"exported {done.result['tensors']} tensors of client {done.result['client']} round "
            f"{done.result['round']}{version_phrase(args, done)} to {out.target} "
            f"({format_bytes(done.bytes_written)})"
        )
    return 0


def _export_offline(args: argparse.Namespace, out: Output, progress: Progress) -> Transfer:
    """safetensors writes by path (a new file, mode 0600): export to a private temporary file,
    then copy it into ``out``, which is the caller's file with the caller's mode, or stdout."""
    import tempfile

    from chunkd.export import export_safetensors  # numpy, then torch: imported only here

    with (
        offline.open_db(args.db) as store,
        tempfile.TemporaryDirectory(prefix="chunkd-export-") as tmp,
    ):
        stored = store.round_numbers()
        round_num = args.round if args.round is not None else store.latest_round()
        if round_num not in stored:
            raise NotFoundError(not_stored_message(round_num, stored, f"in {args.db}"))
        generation = store.get_round(round_num, args.generation).generation
        current = store.get_round(round_num).generation
        path = Path(tmp) / "export.safetensors"
        tensors = export_safetensors(store, round_num, path, args.generation)
        digest = hashlib.sha256()
        size = 0
        progress.total = path.stat().st_size
        with open(path, "rb") as f:
            while block := f.read(_COPY_BLOCK_BYTES):
                digest.update(block)
                out.write(block)
                size += len(block)
                progress.update(size)
    return Transfer.of(
        {
            "client": args.client,
            "round": round_num,
            "generation": generation,
            "format": args.export_format,
            "tensors": tensors,
            "bytes": size,
            "sha256": digest.hexdigest(),
            "transfer": "offline",
        },
        current,
    )
