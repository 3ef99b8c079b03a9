"""``chunkd``: the console script. Argument parsing and the one error -> exit status mapping.

Every command module adds its own sub-parser (``add_parser``) and runs it (``run(args) -> int``);
this module only wires them and is the CLI's boundary: a ChunkdError, wherever it was raised (here
or in the daemon, carried by its answer's code), prints ``chunkd: <message>`` on one line of
stderr and exits with :data:`chunkd.errors.EXIT_STATUS_BY_CODE` of its code. The table is the
README's; argparse usage errors exit 2, an interrupt 130, a closed output pipe 141 (what a shell
reports for a writer killed by SIGPIPE).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from chunkd import __version__
from chunkd.cli import (
    export,
    forget,
    ingest,
    options,
    prune,
    restore,
    serve,
    status,
    tenant,
    verify,
)
from chunkd.cli import list as list_command
from chunkd.errors import EXIT_STATUS_BY_CODE, ChunkdError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

#: The commands of docs/SPEC.md "Command line" in order, then the admin's ``tenant``; each has
#: ``add_parser(commands, common)``.
COMMANDS = (serve, restore, list_command, status, verify, prune, forget, ingest, export, tenant)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (docs/SPEC.md, "a one-line reason")."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="chunkd",
        description="Deduplicating, byte-identical checkpoint store for federated-learning "
        "clients.",
    )
    parser.add_argument("--version", action="version", version=f"chunkd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = options.common_options()
    for command in COMMANDS:
        command.add_parser(commands, common)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_BROKEN_PIPE
    except ChunkdError as e:
        print(f"chunkd: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_STATUS_BY_CODE.get(e.code, 1)
    except OSError as e:  # a file the user named: the OS's reason is the useful message
        where = f": {e.filename}" if e.filename else ""
        print(f"chunkd: {_one_line(e.strerror or str(e))}{where}", file=sys.stderr)
        return 1
    except Exception as e:  # the CLI's boundary (STYLE.md, Part 3): a bug, said in one line
        print(f"chunkd: internal error: {type(e).__name__}: {_one_line(str(e))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
