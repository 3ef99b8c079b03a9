"""How long ``chunkd list`` and ``chunkd status`` take at 1,000 and 10,000 clients (issue 20).

    python -m benchmarks.list_scale --clients 1000 --mode daemon
    python -m benchmarks.list_scale --clients 10000 --mode server

Client directories ``client_00000`` ... each hold a database with two small real rounds; the
databases are copies of one built with the engine (building 10,000 with ingests would take
minutes and measure the ingest, not the listing). The checkpoint itself is left beside each
database, so ``list`` also walks every directory for ``files_on_disk`` as it does in production.

``--mode daemon`` starts a real ``chunkd serve`` on them (the whole daemon, as a user runs it).
``--mode server`` serves the socket with the daemon's own :class:`~chunkd.daemon.server.Server`
and handlers over a state with no lanes or watcher: the list and status paths (handlers, the
summary cache, the answer's encoding, the CLI's reading and rendering) are exactly the daemon's,
but 10,000 clients need no writer model to start (issue 20: the per-client lane model cannot
start 10,000). ``status`` there reports per-client counters shaped like the service's.

Each command is run twice (``first``: a cache that knows nothing; ``again``: nothing changed),
through the CLI as a subprocess, human output to /dev/null. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path

import torch

PATTERN = "client_{:05d}"


def _save(path: Path, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    torch.save({"fc.weight": torch.randn(512, generator=generator)}, path)


def build(root: Path, clients: int) -> Path:
    """``root/fl/client_NNNNN/{model.pth, client_NNNNN_chunks.db}`` for every client."""
    from chunkd.ingest import IngestOptions, ingest_file
    from chunkd.store import ChunkStore

    watch_root = root / "fl"
    template = root / "template"
    template.mkdir(parents=True)
    db = template / "template.db"
    with ChunkStore.open_writer(db) as store:
        for round_num in (1, 2):
            _save(template / "model.pth", round_num)
            ingest_file(template / "model.pth", store, IngestOptions(), round_num=round_num)
    for i in range(clients):
        name = PATTERN.format(i)
        directory = watch_root / name
        directory.mkdir(parents=True)
        shutil.copyfile(db, directory / f"{name}_chunks.db")
        shutil.copyfile(template / "model.pth", directory / "model.pth")
    shutil.rmtree(template)
    return watch_root


def _config(root: Path, watch_root: Path) -> Path:
    config = root / "chunkd.toml"
    config.write_text(
        f'watch_root = "{watch_root}"\nsocket = "{root / "chunkd.sock"}"\n'
        'retention_interval = "3600s"\nrescan_interval = "3600s"\nlog_format = "json"\n'
        'db_path = "{client_dir}/client_{client}_chunks.db"\n'
    )
    return config


def _cli(config: Path, *args: str, json_out: bool) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", *args, "--config", str(config)]
        + (["--json"] if json_out else []),
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return round(time.perf_counter() - started, 3)


def measure(config: Path, clients: int) -> dict[str, object]:
    one = PATTERN.format(clients // 2).removeprefix("client_")
    commands = {
        "list --json": (("list",), True),
        "list": (("list",), False),
        "list --client ID": (("list", "--client", one), False),
        "status": (("status",), False),
        "status --json": (("status",), True),
    }
    out: dict[str, object] = {}
    for label, (args, json_out) in commands.items():
        first = _cli(config, *args, json_out=json_out)
        again = _cli(config, *args, json_out=json_out)
        out[label] = {"first_s": first, "again_s": again}
    return out


def run_daemon(root: Path, config: Path) -> dict[str, object]:
    log = (root / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chunkd.cli.main", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        started = time.monotonic()
        while b'"daemon.ready"' not in (root / "daemon.log").read_bytes():
            if proc.poll() is not None or time.monotonic() - started > 1800:
                raise SystemExit("the daemon did not become ready")
            time.sleep(0.5)
        ready_s = round(time.monotonic() - started, 1)
        _wait_idle(config)  # the start-up scan finds every copied checkpoint already stored
        return {"ready_s": ready_s, "idle_s": round(time.monotonic() - started, 1)}
    finally:
        run_daemon.proc = proc  # type: ignore[attr-defined]
        log.close()


def _wait_idle(config: Path) -> None:
    """Until the daemon has nothing queued or in progress, twice in a row."""
    quiet = 0
    while quiet < 2:
        out = subprocess.run(
            [sys.executable, "-m", "chunkd.cli.main", "status", "--json", "--config", str(config)],
            capture_output=True,
            check=True,
        )
        status = json.loads(out.stdout)
        quiet = quiet + 1 if not status["queue_depth"] and not status.get("ingesting") else 0
        time.sleep(1)


class _ListingState:
    """A daemon state with the watched clients and no lanes: what list and status need."""

    def __init__(self, settings: object, watch_root: Path) -> None:
        from chunkd.daemon.leases import LeaseTable
        from chunkd.daemon.state import ClientInfo

        self.settings = settings
        self.leases = LeaseTable()
        self._clients = {
            d.name.removeprefix("client_"): ClientInfo(
                d.name.removeprefix("client_"), d, d / f"{d.name}_chunks.db"
            )
            for d in sorted(watch_root.iterdir())
        }
        self._started = time.monotonic()

    def clients(self) -> Mapping[str, object]:
        return dict(self._clients)

    def removed_clients(self) -> Mapping[str, object]:
        return {}

    def status(self) -> dict[str, object]:
        per_client = {
            cid: {
                "dir": str(info.directory),
                "db": str(info.db_path),
                "queue_depth": 0,
                "ingested": 2,
                "duplicates": 0,
                "rejected": 0,
                "superseded": 0,
                "errors": 0,
                "last_ingest": None,
                "last_error": None,
            }
            for cid, info in self._clients.items()
        }
        return {
            "version": "bench",
            "ready": True,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "clients_watched": len(per_client),
            "queue_depth": 0,
            "errors": 0,
            "last_ingest": None,
            "clients": per_client,
            "removed_clients": {},
        }

    def submit_ingest(self, *args: object) -> Future[object]:
        raise NotImplementedError

    submit_forget = submit_prune = submit_ingest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--mode", choices=("daemon", "server"), default="daemon")
    parser.add_argument("--root", type=Path, help="reuse (or build) the clients here and keep them")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="chunkd-list-scale-"))
    try:
        started = time.perf_counter()
        watch_root = root / "fl"
        if not watch_root.is_dir():
            build(root, args.clients)
        built_s = round(time.perf_counter() - started, 1)
        config = _config(root, watch_root)
        result: dict[str, object] = {"clients": args.clients, "mode": args.mode, "build_s": built_s}
        if args.mode == "daemon":
            result.update(run_daemon(root, config))
            proc = run_daemon.proc  # type: ignore[attr-defined]
            try:
                result["commands"] = measure(config, args.clients)
            finally:
                proc.terminate()
                proc.wait(timeout=600)
        else:
            from chunkd.config import load_settings
            from chunkd.daemon.server import Server

            settings = load_settings(config)
            server = Server(_ListingState(settings, watch_root))  # type: ignore[arg-type]
            server.start()
            try:
                result["commands"] = measure(config, args.clients)
            finally:
                server.stop()
        print(json.dumps(result, indent=2))
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
