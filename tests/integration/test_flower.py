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

pytestmark = pytest.mark.integration

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


def test_flower_federation_checkpoints_are_stored_and_restored(make_daemon, federation, tmp_path):
    daemon = make_daemon(client_dir_pattern=WITH_GLOBAL, settle_delay="0.5s")
    started = time.monotonic()
    federation.run(daemon.watch_root, ROUNDS, seed=1)
    trained_s = time.monotonic() - started
    clients = {str(i): daemon.watch_root / f"client_{i}" for i in range(NODES)}
    clients["global"] = daemon.watch_root / "global"
    for client in clients:
        wait_ingests(daemon, client, ROUNDS, timeout_s=120)
    time.sleep(2.0)  # longer than the settle delay: a second ingest of any file would show now

    assert [e for e in daemon.events() if e["event"] == "checkpoint.rejected"] == []
    assert [e for e in daemon.events() if e.get("level") == "error"] == []
    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    for client, directory in clients.items():
        expected = [(r, str(directory / f"model_round_{r}.pth")) for r in range(1, ROUNDS + 1)]
        assert sorted((e["round"], e["path"]) for e in ingests(daemon, client)) == expected
        assert stored_rounds(directory / f"client_{client}_chunks.db") == list(range(1, ROUNDS + 1))
        previous = None
        for r in range(1, ROUNDS + 1):
            original = (directory / f"model_round_{r}.pth").read_bytes()
            restored = restore_via_socket(daemon, client, r, restored_dir / f"{client}-{r}.pth")
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
    latest = restore_via_socket(daemon, "global", "latest", restored_dir / "latest.pth")
    assert latest == (clients["global"] / f"model_round_{ROUNDS}.pth").read_bytes()
    verify = daemon.cli("verify")
    assert verify.returncode == 0, verify.stderr
    print(f"flower: {ROUNDS} rounds x {NODES} nodes trained in {trained_s:.1f}s")
