"""``chunkd serve``: run the daemon in the foreground (what systemd starts).

The daemon itself is :func:`chunkd.daemon.serve.run`, imported only here so that the other
commands never load it. ``--socket`` overrides the config's ``socket``; ``--json`` forces JSON
log lines even on a terminal. A failure to start is one line on stderr naming the config key
(JSON unless stderr is a terminal) and exit status 78 when the configuration is the cause
(:mod:`chunkd.daemon.startup`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from chunkd.cli import options
from chunkd.errors import ConfigError


def add_parser(commands: options.Commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "serve",
        parents=[common],
        help="run the daemon in the foreground",
        description="Watch the clients, ingest their checkpoints and serve the socket.",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: the daemon's modules are only paid for by `serve`.
    from chunkd.daemon import serve
    from chunkd.daemon.startup import report_startup_failure

    try:
        settings = options.load_cli_settings(args)
        if args.socket:
            settings = dataclasses.replace(settings, socket=Path(args.socket).absolute())
        if args.json:
            settings = dataclasses.replace(settings, log_format="json")
    except ConfigError as e:  # the same one line as any other start-up failure (issue 10)
        return report_startup_failure(e)
    return serve.run(settings)
