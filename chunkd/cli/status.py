"""``chunkd status``: the daemon's health, as the daemon reports it (uptime, clients, queue...).

Only through the daemon: a daemon that is not running has no status, and the exit status 8 with
its message says so. Values are rendered by their key's unit suffix (``_s``, ``_bytes``), so a
field the daemon adds later still reads well.
"""

from __future__ import annotations

import argparse
import textwrap
from datetime import datetime, timezone

from chunkd.cli import options
from chunkd.cli.client import DaemonClient
from chunkd.cli.render import (
    format_bytes,
    format_duration,
    format_pairs,
    format_table,
    print_json,
    removed_text,
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
    with DaemonClient.connect(options.socket_path(args), offline=None) as client:
        status = client.call("status")
    if args.json:
        print_json(status)
    else:
        print(render_status(status))
    return 0


#: The human table fits a terminal this wide (issue 10: it used to take over 200 columns).
WIDTH = 100
#: Above this many clients the table shows only those that need a look (:func:`_clients`).
QUIET_ABOVE = 50
#: Per-client fields shown as table columns, in this order, with their short headers; the rest
#: (directories, database paths, nested objects) are in ``--json``.
_CLIENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("queue_depth", "QUEUE"),
    ("ingested", "INGESTED"),
    ("duplicates", "DUPL"),
    ("rejected", "REJECTED"),
    ("errors", "ERRORS"),
)
#: Shown only when some client has any (the table must fit :data:`WIDTH`).
_RARE_COLUMNS: tuple[tuple[str, str], ...] = (("superseded", "SUPERSEDED"),)


def render_status(status: dict[str, object]) -> str:
    """Scalars as aligned ``key  value`` lines, warnings, then the clients as a table no wider
    than :data:`WIDTH` with each client's last error below it. Other nested objects: a table
    when they map names to objects, else indented lines; an empty one is left out (no header
    over nothing). ``--json`` shows everything."""
    scalars = [(_label(k), _value(k, v)) for k, v in status.items() if not _is_container(v)]
    parts = [_fit(format_pairs(scalars))] if scalars else []
    for key, value in status.items():
        if key == "clients" and isinstance(value, dict):
            parts.append(_clients(value))
        elif isinstance(value, dict) and not value:
            continue
        elif key == "warnings" and isinstance(value, list):
            if value:
                parts.append("warnings:\n" + "\n".join(_fit(f"  ! {w}") for w in value))
        elif key == "removed_clients" and isinstance(value, dict):
            lines = [_wrap(f"! client {cid}: {removed_text(r)}") for cid, r in value.items()]
            parts.append("removed clients:\n" + "\n".join(lines))
        elif key == "damaged_databases" and isinstance(value, dict):
            lines = [_wrap(f"! client {cid}: {reason}") for cid, reason in value.items()]
            parts.append("damaged databases:\n" + "\n".join(lines))
        elif key in ("last_ingest", "last_error") and isinstance(value, dict):
            parts.append(_fit(f"{_label(key)}: {_event_text(value)}"))
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            parts.append(f"{_label(key)}:\n{_table(list(value), list(value.values()), 'ID')}")
        elif isinstance(value, dict):
            pairs = [(_label(k), _value(k, v)) for k, v in value.items()]
            parts.append(f"{_label(key)}:\n" + _fit(format_pairs(pairs, indent=2)))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            parts.append(f"{_label(key)}:\n" + _fit(_table([], value, "")))
        elif isinstance(value, list):
            parts.append(format_pairs([(_label(key), ", ".join(map(str, value)) or "-")]))
    return "\n\n".join(parts)


def _clients(all_clients: dict[str, object]) -> str:
    """One row per client: counters and the last ingest; then each client's last error.

    Past :data:`QUIET_ABOVE` clients, only the ones with something queued, rejected or failing
    get a row and the others are counted in one line: 10,000 idle rows help nobody.
    """
    if not all_clients:
        return "clients: none"
    clients = all_clients
    if len(all_clients) > QUIET_ABOVE:
        clients = {cid: e for cid, e in all_clients.items() if _needs_a_look(e)}
    quiet = len(all_clients) - len(clients)
    quiet_line = (
        f"{quiet} {'other ' if clients else ''}clients: nothing queued, nothing rejected, no "
        "errors (chunkd status --json lists every client)"
    )
    if not clients:
        return f"clients:\n{quiet_line}"
    columns = _CLIENT_COLUMNS + tuple(
        (key, header)
        for key, header in _RARE_COLUMNS
        if any(isinstance(e, dict) and e.get(key) for e in clients.values())
    )
    headers = ["CLIENT", *(h for _, h in columns), "LAST INGEST"]
    rows = []
    errors = []
    for cid, entry in clients.items():
        fields = entry if isinstance(entry, dict) else {}
        last = fields.get("last_ingest")
        rows.append(
            [
                _clip(cid, 20),
                *(_value(k, fields.get(k)) for k, _ in columns),
                _event_text(last) if isinstance(last, dict) else "-",
            ]
        )
        error = fields.get("last_error")
        if isinstance(error, dict):
            errors.append(_fit(f"  client {cid}: {_event_text(error)}"))
        elif isinstance(error, str):
            errors.append(_fit(f"  client {cid}: {error}"))
    table = format_table(headers, rows, right=set(range(1, len(columns) + 1)))
    text = "clients:\n" + "\n".join(_fit(line) for line in table.splitlines())
    if quiet:
        text += "\n" + _fit(quiet_line)
    if errors:
        text += "\n\nlast errors:\n" + "\n".join(errors)
    return text


def _needs_a_look(entry: object) -> bool:
    fields = entry if isinstance(entry, dict) else {}
    return bool(
        fields.get("queue_depth")
        or fields.get("rejected")
        or fields.get("errors")
        or fields.get("last_error")
    )


def _event_text(event: dict[str, object]) -> str:
    """``round 12 of /srv/fl/client_1/m.pth at 12:00:01 UTC`` / ``/x.pth: reason (12:00 UTC)``."""
    at = _value("at", event.get("at")) if event.get("at") is not None else None
    if isinstance(event.get("at"), str) and len(str(at)) >= 19 and str(at)[10] == "T":
        at = str(at)[:19].replace("T", " ") + " UTC"  # ISO 8601 from the daemon, to the second
    path = event.get("path")
    if "error" in event:
        head = f"client {event['client']}: " if "client" in event else ""
        where = f"{path}: " if path else ""
        when = f" ({at})" if at else ""
        return f"{head}{where}{event['error']}{when}"
    parts = []
    if "client" in event:
        parts.append(f"client {event['client']}")
    if event.get("round") is not None:
        parts.append(f"round {event['round']}")
    text = " ".join(parts)
    if at:
        text += f" at {at}"
    return text or "-"


def _wrap(text: str) -> str:
    """A message that must be read whole (what was lost): wrapped to :data:`WIDTH`, not cut."""
    return textwrap.fill(
        text, width=WIDTH, initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False
    )


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _fit(text: str) -> str:
    """Every line at most :data:`WIDTH` columns (a long path or message is cut with ``…``)."""
    return "\n".join(_clip(line, WIDTH) for line in text.splitlines())


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
