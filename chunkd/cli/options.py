"""What every command shares: the common options, argument types, socket and config discovery.

Each command parser inherits :func:`common_options` (``--config``, ``--socket``, ``--json``), so
they are accepted after the command name, as in docs/SPEC.md, "Command line". Argument types
reject a bad client id or round at parse time, which makes it a usage error (exit 2) with
argparse's one-line message rather than a daemon round trip. :mod:`chunkd.config` (tomllib,
dataclasses, fractions) is imported only when a command needs it: ``chunkd status --socket``
does not (issue 10, item 9).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from chunkd.errors import RequestError
from chunkd.protocol import LATEST, MAX_ROUND, TRANSFER_FD, TRANSFERS

if TYPE_CHECKING:
    from chunkd.config import Settings

    #: What ``add_subparsers`` returns; each command module adds its parser to it.
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]


def common_options() -> argparse.ArgumentParser:
    """The parent parser of every command."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $CHUNKD_CONFIG, then /etc/chunkd/chunkd.toml, then built-in)",
    )
    parent.add_argument(
        "--socket", metavar="PATH", help="the daemon's socket (default: the config's `socket`)"
    )
    parent.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    return parent


def client_id(text: str) -> str:
    """argparse type for ``--client``: the same rule as the config and the protocol."""
    from chunkd.config import check_client_id  # config is imported only when it is needed

    try:
        check_client_id(text)
    except RequestError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def round_or_latest(text: str) -> int | None:
    """argparse type for ``--round``: a round number, or ``latest`` (None)."""
    if text == LATEST:
        return None
    return round_number(text)


def round_number(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a round number: {text!r}") from None
    if not 0 <= value <= MAX_ROUND:
        raise argparse.ArgumentTypeError(f"round must be from 0 to 2**63-1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def add_client_and_round(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--client ID`` and ``--round N|latest`` (default latest), as every command that reads one
    round spells them. ``required=False`` for commands whose ``--db`` names the client itself."""
    parser.add_argument(
        "--client",
        required=required,
        type=client_id,
        metavar="ID",
        help=None if required else "the client (with --db: taken from the database's name)",
    )
    parser.add_argument(
        "--round",
        type=round_or_latest,
        default=None,
        metavar="N|latest",
        help="round number (default: latest)",
    )


def add_generation(parser: argparse.ArgumentParser) -> None:
    """``--generation G``: an earlier version of a rewritten round (restore and export)."""
    parser.add_argument(
        "--generation",
        type=int,
        metavar="G",
        help="an earlier version of a rewritten round (0 = the first; `chunkd list --client ID`"
        " shows them); default: the current version",
    )


def add_transfer(parser: argparse.ArgumentParser) -> None:
    """``--transfer fd|frames``: how the daemon sends checkpoint bytes (docs/PROTOCOL.md)."""
    parser.add_argument(
        "--transfer",
        choices=TRANSFERS,
        default=TRANSFER_FD,
        help="how the daemon sends the bytes: fd (default) or frames",
    )


def load_cli_settings(args: argparse.Namespace) -> Settings:
    """The Settings ``--config`` (or its default chain) names; ConfigError if invalid."""
    from chunkd.config import load_settings, resolve_config_path

    return load_settings(resolve_config_path(args.config))


def socket_path(args: argparse.Namespace) -> Path:
    """``--socket``, else the config's ``socket``: where the daemon should be answering."""
    if args.socket:
        return Path(args.socket)
    return load_cli_settings(args).socket
