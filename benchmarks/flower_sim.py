"""``python -m benchmarks.flower_sim --clients 1000 --rounds 3`` (issue 20): a real FL framework at
scale beside the daemon.

Flower's simulation engine (``flwr[simulation]==1.42.*``, Ray) runs
:mod:`benchmarks.flower_sim_app`:
FedAvg over N virtual SuperNodes, every client training one step and ``torch.save``-ing its model
into ``client_<partition-id>/`` under the daemon's watch root after every round. The daemon (the
product defaults, as :mod:`benchmarks.many_clients` runs it) was started first on the empty root,
so client directories appear while it runs, as in a real deployment.

Flower needs an interpreter with ``flwr[simulation]``; pip resolves it to older ``packaging`` and
``rich`` than chunkd's dev environment has, so it may live in its own venv that sees chunkd's
torch (``--python``, or ``$CHUNKD_FLWR_PYTHON``; the default is this interpreter). Reported: files
written and ingested (each once), the daemon's figures after the run, the ServerApp's round times,
the lag from a round's aggregation to its last file ingested, and each client's stored rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.chunkd_daemon import _parse_ts
from benchmarks.many_clients import TailedDaemon, _process_figures
from benchmarks.runner import REPO_ROOT, child_env

Result = dict[str, object]


def flwr_python() -> str:
    return os.environ.get("CHUNKD_FLWR_PYTHON") or sys.executable


def unavailable_reason(python: str) -> str | None:
    probe = subprocess.run(
        [python, "-c", "import flwr.simulation, ray, torch; print(flwr.__version__)"],
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
        timeout=120,
    )
    if probe.returncode != 0:
        return f"{python} has no flwr[simulation] ({probe.stderr.strip()[-200:]})"
    return None


def run(work: Path, clients: int, rounds: int, timeout_s: float, python: str) -> Result:
    deadline = time.monotonic() + timeout_s
    result: Result = {"clients": clients, "rounds": rounds, "python": python}
    reason = unavailable_reason(python)
    if reason:
        return {**result, "error": reason}
    daemon = TailedDaemon(work / "d")
    expected = [
        daemon.watch_root / f"client_{i}" / f"model_round_{r}.pth"
        for r in range(1, rounds + 1)
        for i in range(clients)
    ]
    env = {**child_env(), "RAY_TMPDIR": str(work / "ray")}
    (work / "ray").mkdir()
    daemon.start()
    sim_log = work / "flower.log"
    proc: subprocess.Popen[bytes] | None = None
    counts = [str(clients), str(rounds)]
    try:
        with open(sim_log, "wb") as log:
            proc = subprocess.Popen(
                [python, "-m", "benchmarks.flower_sim_app", str(daemon.watch_root), *counts],
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO_ROOT,
                env=env,
                start_new_session=True,
            )
            try:
                out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise TimeoutError(f"the simulation did not end within {timeout_s:.0f}s") from None
        if proc.returncode != 0:
            raise RuntimeError(
                f"simulation exited {proc.returncode}: {sim_log.read_text()[-1500:]}"
            )
        timings = json.loads(out.decode().strip().splitlines()[-1])
        result["simulation"] = timings
        result["files_written"] = sum(1 for p in expected if p.exists())
        result["ingested"] = daemon.wait_ingested(expected, deadline)
        result["ingested_twice"] = sum(1 for e in daemon.ingested.values() if len(e) > 1)
        result["failure_count"] = len(daemon.failures)
        aggregated = timings.get("aggregated_at") or []
        lags = []
        for r, at in enumerate(aggregated, start=1):
            stamps = [
                _parse_ts(daemon.ingested[str(p)][0]["timestamp"])
                for p in expected[(r - 1) * clients : r * clients]
                if str(p) in daemon.ingested
            ]
            if stamps:
                lags.append(max(stamps) - at)
        result["lag_after_round_s"] = lags
        began = float(timings.get("started", 0))
        result["round_s"] = [b - a for a, b in zip([began, *aggregated], aggregated, strict=False)]
        result["daemon"] = _process_figures(daemon.pid)
    except (TimeoutError, RuntimeError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        result["exit_code"] = daemon.stop()
        # Ray's own processes (raylet, GCS, actors) were started in the simulation's session:
        # whatever of it is still alive goes with its process group (ours, by id).
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    result["databases_complete"] = _complete_databases(daemon.watch_root, clients, rounds)
    return result


def _complete_databases(watch_root: Path, clients: int, rounds: int) -> int:
    from chunkd.store import ChunkStore

    want = list(range(1, rounds + 1))
    complete = 0
    for i in range(clients):
        db = watch_root / f"client_{i}" / f"client_{i}_chunks.db"
        if db.exists():
            with ChunkStore.open_reader(db) as store:
                complete += list(store.round_numbers()) == want
    return complete


def render(r: object) -> str:
    if not isinstance(r, dict):
        return ""
    head = (
        f"\n## A real framework at scale: Flower simulation, {r.get('clients'):,} clients x "
        f"{r.get('rounds')} rounds (issue 20; `python -m benchmarks.flower_sim`)\n\n"
    )
    if "simulation" not in r:
        return head + f"Not measured: {r.get('error')}\n"
    n = int(r["clients"]) * int(r["rounds"])
    d = r.get("daemon") or {}
    rows = [
        ("files written by the ClientApps", f"{r['files_written']:,} of {n:,}"),
        (
            "ingested (once each)",
            f"{r['ingested']:,} ({r['ingested_twice']} twice, "
            f"{r['failure_count']} rejected/failed)",
        ),
        ("clients whose database holds every round", f"{r['databases_complete']:,}"),
        ("simulation wall time", f"{r['simulation']['wall_s']:.0f} s"),
        ("ServerApp round times", ", ".join(f"{s:.1f} s" for s in r["round_s"])),
        (
            "last file of a round ingested, after its aggregation",
            ", ".join(f"{s:.1f} s" for s in r["lag_after_round_s"]),
        ),
        (
            "daemon after the run: threads / fds / RssAnon",
            f"{d.get('threads')} / {d.get('fds')} / {int(d.get('rss_anon_kib', 0)) >> 10} MiB",
        ),
    ]
    table = "| | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    err = f"\n\nStopped early: {r['error']}" if r.get("error") else ""
    return head + table + err + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flower_sim")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--python", default=flwr_python(), help="an interpreter with flwr[simulation]")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # short: Ray's session directory holds Unix sockets (a path of at most 107 bytes)
    work = Path(tempfile.mkdtemp(prefix="chunkd-flwr-", dir="/tmp"))
    try:
        result = run(work, args.clients, args.rounds, args.timeout, args.python)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
