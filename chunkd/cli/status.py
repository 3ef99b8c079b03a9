"""``chunkd status``: the daemon's health, as the daemon reports it (uptime, clients, queue...).

Only through the daemon: a daemon that is not running has no status, and the exit status 8 with
its message says so. Values are rendered by their key's unit suffix (``_s``, ``_bytes``), so a
field the daemon adds later still reads well.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

from chunkd.cli import options
from chunkd.cli.client import DaemonClient
from chunkd.cli.render import (
    format_bytes,
    format_duration,
    format_pairs,
    format_table,
    print_json,
)


def add_parser(commands: options.Commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "status",
        parents=[common],
        help="daemon health: uptime, clients, queue, last ingest, errors",
        description="Show the running daemon's health.",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with DaemonClient.connect(options.socket_path(args)) as client:
        status = client.call("status")
    if args.json:
        print_json(status)
    else:
        print(render_status(status))
    return 0


def render_status(status: dict[str, object]) -> str:
    """Scalars as aligned ``key  value`` lines, then each nested object: a table when it maps
    names (client ids) to objects, else indented lines. ``--json`` shows everything."""
    scalars = [(_label(k), _value(k, v)) for k, v in status.items() if not _is_container(v)]
    parts = [format_pairs(scalars)] if scalars else []
    for key, value in status.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            parts.append(f"{_label(key)}:\n{_table(list(value), list(value.values()), 'ID')}")
        elif isinstance(value, dict):
            pairs = [(_label(k), _value(k, v)) for k, v in value.items()]
            parts.append(f"{_label(key)}:\n" + format_pairs(pairs, indent=2))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            parts.append(f"{_label(key)}:\n{_table([], value, '')}")
        elif isinstance(value, list):
            parts.append(format_pairs([(_label(key), ", ".join(map(str, value)) or "-")]))
    return "\n\n".join(parts)


def _table(names: list[str], items: list[dict[str, object]], name_header: str) -> str:
    """One row per item, one column per scalar field (nested values are left to --json)."""
    nested = {k for item in items for k, v in item.items() if _is_container(v)}
    columns: list[str] = []
    for item in items:
        columns += [k for k in item if k not in columns and k not in nested]
    headers = ([name_header] if names else []) + [_label(c).upper() for c in columns]
    rows = [
        ([names[i]] if names else []) + [_value(c, item.get(c)) for c in columns]
        for i, item in enumerate(items)
    ]
    return format_table(headers, rows, right=set())


def _is_container(value: object) -> bool:
    return isinstance(value, (dict, list))


def _label(key: str) -> str:
    """``uptime_s`` -> ``uptime``, ``queue_depth`` -> ``queue depth``: units go in values."""
    return key.removesuffix("_s").removesuffix("_ms").replace("_", " ")


def _value(key: str, value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if key == "at" or key.endswith("_at"):  # seconds since the epoch
            return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        if key.endswith("_s"):
            return format_duration(float(value))
        if "bytes" in key:
            return format_bytes(value)
    return str(value)
