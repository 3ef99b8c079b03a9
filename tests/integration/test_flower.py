"""Flower beside chunkd: a real federation on localhost, checkpoints written as Flower users do.

A SuperLink, three SuperNodes (deployment engine, ``--insecure``) and a Message-API
ServerApp/ClientApp with FedAvg (``flower_app/``) train a small BatchNorm CNN on synthetic data.
The strategy saves ``global/model_round_<r>.pth``, each ClientApp ``client_<partition-id>/
model_round_<r>.pth``; a real ``chunkd serve`` watches both with one ``client_dir_pattern`` line.
Checked: every file ingested exactly once under its round, every round restored through the socket
byte-identical, and the restored state_dict loads into the model and gives identical outputs.

Runs under ``make integration`` (marker ``integration``; needs the ``integration`` extra, flwr).
"""

from __future__ import annotations

import hashlib
import io
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fl_harness import ingests, restore_via_socket, stored_rounds, wait_ingests
from flower_federation import APP_DIR, Federation

sys.path.insert(0, str(APP_DIR))
from chunkd_flower_it.task import Net, fixed_input

# Two federated runs of ~2 minutes each on 2 busy cores, then ~50 restores through the CLI.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

NODES = 3
ROUNDS = 5
#: Flower's ``global/`` beside the default ``client_<id>/`` directories: the one config line.
WITH_GLOBAL = "client_(?P<client>[A-Za-z0-9_.-]+)|global"


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path / "flower", NODES)
    try:
        yield fed.start()
    finally:
        fed.close()


def _outputs(state: dict[str, torch.Tensor]) -> torch.Tensor:
    model = Net()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return model(fixed_input())


def _check_run(daemon, clients: dict[str, Path], run: int, restored_dir: Path) -> dict:
    """Every file of the run ingested once under its round; every round restores byte-identical
    through the socket and gives the original model's outputs. Returns the run's file bytes."""
    files = {}
    for client, directory in clients.items():
        expected = [str(directory / f"model_round_{r}.pth") for r in range(1, ROUNDS + 1)]
        events = ingests(daemon, client)[(run - 1) * ROUNDS :]
        assert sorted((e["round"], e["path"]) for e in events) == list(enumerate(expected, start=1))
        assert stored_rounds(directory / f"client_{client}_chunks.db") == list(range(1, ROUNDS + 1))
        previous = None
        for r in range(1, ROUNDS + 1):
            original = (directory / f"model_round_{r}.pth").read_bytes()
            files[client, r] = original
            out = restored_dir / f"run{run}-{client}-{r}.pth"
            restored = restore_via_socket(daemon, client, r, out)
            assert hashlib.sha256(restored).hexdigest() == hashlib.sha256(original).hexdigest()
            state = torch.load(io.BytesIO(restored), weights_only=True)
            assert int(state["features.1.num_batches_tracked"]) > 0  # BatchNorm buffers came back
            outputs = _outputs(state)
            assert torch.equal(
                outputs, _outputs(torch.load(io.BytesIO(original), weights_only=True))
            )
            if previous is not None:
                assert not torch.equal(outputs, previous)  # each round is a different model
            previous = outputs
    return files


def test_flower_federation_and_its_rerun_are_stored_and_restored(make_daemon, federation, tmp_path):
    # Keep 5 rounds, as by default; retention runs only when asked (chunkd prune), below.
    daemon = make_daemon(client_dir_pattern=WITH_GLOBAL, settle_delay="0.5s", chunk_keep_rounds=5)
    clients = {str(i): daemon.watch_root / f"client_{i}" for i in range(NODES)}
    clients["global"] = daemon.watch_root / "global"
    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    started = time.monotonic()
    first_files: dict = {}
    for run, seed in ((1, 1), (2, 2)):  # the rerun writes the same names into the same directories
        federation.run(daemon.watch_root, ROUNDS, seed=seed)
        for client in clients:
            wait_ingests(daemon, client, run * ROUNDS, timeout_s=120)
        time.sleep(2.0)  # longer than the settle delay: a second ingest of any file would show now
        assert [e for e in daemon.events() if e["event"] == "checkpoint.rejected"] == []
        assert [e for e in daemon.events() if e.get("level") == "error"] == []
        files = _check_run(daemon, clients, run, restored_dir)
        if run == 1:
            first_files = files
    elapsed_s = time.monotonic() - started
    assert all(first_files[key] != files[key] for key in files)  # the rerun trained anew

    # The rerun's rounds are the newest written: latest is its last round, and retention keeps
    # its five rounds rather than mixing in the first run's.
    prune = daemon.cli("prune")
    assert prune.returncode == 0, prune.stderr
    for client in clients:
        latest = restore_via_socket(daemon, client, "latest", restored_dir / f"latest-{client}.pth")
        assert latest == files[client, ROUNDS]
        for r in range(1, ROUNDS + 1):
            out = restored_dir / f"kept-{client}-{r}.pth"
            assert restore_via_socket(daemon, client, r, out) == files[client, r]
    # ... and the first run is not lost: each of its rounds is an earlier generation (SPEC
    # "Rounds"), restorable byte-identical until retention removes it.
    for client in clients:
        for r in range(1, ROUNDS + 1):
            out = restored_dir / f"first-{client}-{r}.pth"
            version = ("--round", str(r), "--generation", "0")
            got = daemon.cli("restore", "--client", client, *version, "-o", str(out))
            assert got.returncode == 0, got.stderr
            assert out.read_bytes() == first_files[client, r]
    verify = daemon.cli("verify")
    assert verify.returncode == 0, verify.stderr
    print(f"flower: 2 runs x {ROUNDS} rounds x {NODES} nodes, with chunkd checks, {elapsed_s:.1f}s")
