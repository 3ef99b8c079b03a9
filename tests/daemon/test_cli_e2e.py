"""The command line against a real daemon: restores, exports and requests under load."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.daemon.checkpoints import save_model

pytestmark = pytest.mark.slow


def fill(daemon, clients: int, rounds: int, elements: int = 4096) -> dict[tuple[str, int], bytes]:
    """Write ``rounds`` rounds to each client, one round at a time: files written at once may be
    committed in any order, and retention never removes the round committed last."""
    written = {}
    for r in range(1, rounds + 1):
        for c in range(1, clients + 1):
            path = daemon.watch_root / f"client_{c}" / f"model_round_{r}.pth"
            written[(str(c), r)] = save_model(path, c * 1000 + r, elements=elements)
        daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=len(written))
    return written


def test_restore_every_round_of_several_clients(make_daemon, tmp_path):
    daemon = make_daemon()
    written = fill(daemon, clients=3, rounds=3)
    for (client, round_num), content in written.items():
        out = tmp_path / f"{client}-{round_num}.pth"
        result = daemon.cli(
            "restore", "--client", client, "--round", str(round_num), "-o", str(out)
        )
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == content
    # latest, to stdout through a pipe
    result = daemon.cli("restore", "--client", "2", "--round", "latest", "-o", "-")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(written[("2", 3)]).digest()
    # unknown round and client: exit 3 with one line on stderr, no file left behind
    missing = tmp_path / "missing.pth"
    result = daemon.cli("restore", "--client", "2", "--round", "99", "-o", str(missing))
    assert result.returncode == 3
    assert len(result.stderr.decode().strip().splitlines()) == 1
    assert not missing.exists()
    assert daemon.cli("restore", "--client", "nope", "-o", str(missing)).returncode == 3


def test_list_status_verify_prune_json(make_daemon):
    daemon = make_daemon(chunk_keep_rounds=2)
    fill(daemon, clients=2, rounds=3)
    listing = json.loads(daemon.cli("list", "--json").stdout)
    assert {c["client"] for c in listing["clients"]} == {"1", "2"}
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert status["clients_watched"] == 2 and status["ready"] is True
    assert daemon.cli("verify").returncode == 0
    dry = json.loads(daemon.cli("prune", "--client", "1", "--dry-run", "--json").stdout)
    assert daemon.rounds("1") == [1, 2, 3], "a dry run changes nothing"
    assert "1" in json.dumps(dry)
    assert daemon.cli("prune", "--client", "1").returncode == 0
    assert daemon.rounds("1") == [2, 3]


def test_export_safetensors_equals_the_original(make_daemon, tmp_path):
    from safetensors.torch import load_file

    daemon = make_daemon()
    path = daemon.watch_root / "client_1" / "model_round_4.pth"
    path.parent.mkdir(parents=True)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model(torch.randn(2, 3, 8, 8))  # moves the BatchNorm running statistics
    torch.save({"cur_round": 4, "model": model.state_dict()}, path)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested")
    out = tmp_path / "model.safetensors"
    result = daemon.cli(
        "export", "--client", "1", "--round", "4", "--format", "safetensors", "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    loaded = load_file(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded[f"model.{name}"], tensor), name


def test_restores_while_ingesting_and_pruning_are_correct(make_daemon, tmp_path):
    daemon = make_daemon(chunk_keep_rounds=3, retention_interval="0.5s")
    written = fill(daemon, clients=1, rounds=3, elements=200_000)
    # Every file is made before the restore threads start: they only read what they compare
    # with (issue 17: they iterated ``written`` while this thread added to it, and both died).
    staging = tmp_path / "staging"
    later = {r: save_model(staging / f"{r}.pth", 1000 + r, elements=200_000) for r in range(4, 10)}
    known = frozenset(hashlib.sha256(c).hexdigest() for c in [*written.values(), *later.values()])
    errors: list[str] = []
    served: list[int] = []
    stop = threading.Event()

    def restore_loop() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            result = daemon.cli("restore", "--client", "1", "--round", "latest", "-o", "-")
            if result.returncode == 0:
                served.append(n)
                if hashlib.sha256(result.stdout).hexdigest() not in known:
                    errors.append(f"restore {n}: unknown bytes")
            elif result.returncode != 3:  # a pruned round may vanish between list and read
                errors.append(result.stderr.decode())

    threads = [threading.Thread(target=restore_loop) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for r, content in later.items():
            path = daemon.watch_root / "client_1" / f"model_round_{r}.pth"
            path.write_bytes(content)
            time.sleep(0.3)
        daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=9)
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert served, "no restore succeeded"
    assert daemon.rounds("1") == [7, 8, 9]
    assert daemon.cli("verify").returncode == 0


def test_daemon_unavailable_points_to_the_offline_form(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", "list", "--socket", str(tmp_path / "no.sock")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 8
    assert "--db" in result.stderr


def test_status_answers_quickly_while_restores_run(make_daemon):
    daemon = make_daemon()
    fill(daemon, clients=1, rounds=1, elements=2_000_000)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chunkd.cli.main",
                "restore",
                "--client",
                "1",
                "-o",
                "-",
                "--socket",
                str(daemon.socket),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(10)
    ]
    from chunkd.cli.client import DaemonClient

    latencies = []
    with DaemonClient.connect(Path(daemon.socket)) as client:
        for _ in range(50):
            started = time.perf_counter()
            client.call("status")
            latencies.append(time.perf_counter() - started)
    for p in procs:
        assert p.wait(timeout=120) == 0
    latencies.sort()
    assert latencies[int(len(latencies) * 0.99) - 1] < 1.0
