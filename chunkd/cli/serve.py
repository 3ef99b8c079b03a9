"""``chunkd serve``: run the daemon in the foreground (what systemd starts).

The daemon itself is :func:`chunkd.daemon.service.run`, imported only here so that the other
commands never load it. ``--socket`` overrides the config's ``socket``; ``--json`` forces JSON
log lines even on a terminal.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from chunkd.cli import options


def add_parser(commands: options.Commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "serve",
        parents=[common],
        help="run the daemon in the foreground",
        description="Watch the clients, ingest their checkpoints and serve the socket.",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = options.load_cli_settings(args)
    if args.socket:
        settings = dataclasses.replace(settings, socket=Path(args.socket).absolute())
    if args.json:
        settings = dataclasses.replace(settings, log_format="json")
    from chunkd.daemon import service  # the daemon's imports are only paid for by `serve`

    return service.run(settings)
