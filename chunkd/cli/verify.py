"""``chunkd verify``: re-hash every stored chunk and rebuild every round, then report problems.

Exit status 0 when everything checks out, 5 (``integrity``) when any problem is found; each
problem is printed with the client, round and chunk it concerns. Through the daemon, clients are
verified one request at a time, which is what moves the progress bar; ``--db`` checks one
database directly.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from chunkd.cli import offline, options
from chunkd.cli.client import DaemonClient, OnWait, follow_status
from chunkd.cli.render import Progress, print_json
from chunkd.errors import IntegrityError


def add_parser(commands: options.Commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "verify",
        parents=[common],
        help="re-hash every chunk and rebuild every round",
        description="Check stored chunks against their SHA-256 and that every round rebuilds.",
    )
    p.add_argument("--client", type=options.client_id, metavar="ID", help="only this client")
    p.add_argument(
        "--db", type=Path, metavar="PATH", help="check this database, without the daemon"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    entries = _verify_offline(args) if args.db is not None else _verify_through_daemon(args)
    problems = sum(len(_problems(entry)) for entry in entries)
    if args.json:
        print_json({"ok": problems == 0, "clients": entries})
    else:
        print(render_report(entries))
    if problems:
        clients = sum(1 for entry in entries if _problems(entry))
        raise IntegrityError(f"verify found {problems} problem(s) in {clients} client(s)")
    return 0


def _verify_offline(args: argparse.Namespace) -> list[dict[str, object]]:
    from chunkd.summary import summarize_verify
    from chunkd.verify import verify_store

    client_id = offline.client_for_db(args, args.db)
    with offline.open_db(args.db) as store:
        stats = store.stats()
        with Progress("verify", stats.chunks + stats.rounds, fmt=_steps) as bar:
            bar.update(0, force=True)
            done = 0

            def step() -> None:
                nonlocal done
                done += 1
                bar.update(done)

            report = verify_store(store, step=step)
    return [summarize_verify(client_id, report)]


def _steps(count: int) -> str:
    return f"{count} chunks+rounds"


def _verify_through_daemon(args: argparse.Namespace) -> list[dict[str, object]]:
    """One request per client; the bar counts database bytes checked (from ``list``), so its
    total, rate and ETA mean something when clients differ in size. Within a client, how far
    the daemon has got comes from ``status`` (``verifying``), asked on a second connection."""
    socket_path = options.socket_path(args)
    with DaemonClient.connect(socket_path) as client:
        listed = client.call("list", client=args.client)["clients"]
        assert isinstance(listed, list)
        sizes = {str(entry["client"]): _size(entry) for entry in listed}
        entries: list[dict[str, object]] = []
        done = 0
        with Progress("verify", sum(sizes.values()) or None) as bar:
            for client_id, size in sizes.items():
                bar.update(done, force=True)
                follow = _follow(socket_path, client_id, _within(done, size), bar)
                result = client.call("verify", client=client_id, on_wait=follow)
                found = result["clients"]
                assert isinstance(found, list)
                entries.extend(found)
                done += size
    return entries


def _within(start: int, size: int) -> Callable[[float], int]:
    """The bar's position when a fraction of the client starting at ``start`` is checked."""
    return lambda fraction: start + int(fraction * size)


def _follow(
    socket_path: Path, client_id: str, position: Callable[[float], int], bar: Progress
) -> OnWait | None:
    """While the daemon verifies ``client_id``: how far it has got (status's ``verifying``)."""

    def on_item(item: dict[str, object]) -> bool:
        if item.get("client") != client_id:
            return False
        checked, total = item.get("done"), item.get("total")
        if isinstance(checked, int) and isinstance(total, int) and total > 0:
            bar.update(position(min(1.0, checked / total)))
        return True

    return follow_status(socket_path, "verifying", on_item) if bar.enabled else None


def _size(entry: dict[str, object]) -> int:
    size = entry.get("db_bytes")
    return size if isinstance(size, int) and size > 0 else 1


def _problems(entry: dict[str, object]) -> list[dict[str, object]]:
    problems = entry.get("problems")
    return problems if isinstance(problems, list) else []


def render_report(entries: list[dict[str, object]]) -> str:
    if not entries:
        return "no clients"
    lines = []
    for entry in entries:
        checked = f"{entry['rounds_checked']} rounds, {entry['chunks_checked']} chunks"
        problems = _problems(entry)
        verdict = "OK" if not problems else f"{len(problems)} problem(s)"
        lines.append(f"client {entry['client']}: {verdict} ({checked})")
        lines.extend(f"  {_describe(problem)}" for problem in problems)
    return "\n".join(lines)


def _describe(problem: dict[str, object]) -> str:
    where = []
    if problem.get("round") is not None:
        where.append(f"round {problem['round']}")
    if problem.get("chunk_id") is not None:
        where.append(f"chunk {problem['chunk_id']}")
    if problem.get("chunk_hash"):
        where.append(f"({str(problem['chunk_hash'])[:16]}…)")
    return f"{' '.join(where) or 'store'}: {problem['problem']}"
