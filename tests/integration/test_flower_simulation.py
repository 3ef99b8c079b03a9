"""Flower's simulation engine with 100 clients beside a real daemon (issue 20, small scale).

The App of ``benchmarks/flower_sim_app.py`` (the benchmark's, one copy): FedAvg over 100 virtual
SuperNodes in Ray actors, each ClientApp ``torch.save``-ing its model into its own
``client_<partition-id>/`` after every round, while the daemon (started first, on an empty watch
root) discovers the directories and takes every file. Needs ``flwr[simulation]`` (Ray): the
``integration`` extra, so it runs in ``make integration``; about a minute, most of it Ray's start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from fl_harness import restore_via_socket, stored_rounds

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
CLIENTS = 100
ROUNDS = 2
COUNTS = (str(CLIENTS), str(ROUNDS))


def test_flower_simulation_of_100_clients_every_round_taken_once(tmp_path, make_daemon) -> None:
    pytest.importorskip("ray", reason="flwr[simulation] (Ray) is not installed: make integration")
    pytest.importorskip("flwr.simulation")
    daemon = make_daemon()
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's Unix sockets
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(ray_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.flower_sim_app", str(daemon.watch_root), *COUNTS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=400)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of Ray's session still alive
        if proc.returncode is None:
            proc.communicate()
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    assert len(json.loads(out.decode().splitlines()[-1])["aggregated_at"]) == ROUNDS

    files = [
        daemon.watch_root / f"client_{i}" / f"model_round_{r}.pth"
        for i in range(CLIENTS)
        for r in range(1, ROUNDS + 1)
    ]
    assert all(f.exists() for f in files)
    daemon.wait_event(
        lambda e: e["event"] == "checkpoint.ingested", count=len(files), timeout_s=120
    )
    taken = Counter(str(e["path"]) for e in daemon.ingested())
    assert taken == Counter(str(f) for f in files)  # every file of every round, once
    assert not [
        e for e in daemon.events() if e["event"] in ("ingest.failed", "checkpoint.rejected")
    ]
    for i in range(CLIENTS):
        assert stored_rounds(daemon.db(str(i))) == list(range(1, ROUNDS + 1))
    last = daemon.watch_root / f"client_{CLIENTS - 1}" / f"model_round_{ROUNDS}.pth"
    assert restore_via_socket(daemon, str(CLIENTS - 1), ROUNDS, tmp_path / "r.pth") == (
        last.read_bytes()
    )
