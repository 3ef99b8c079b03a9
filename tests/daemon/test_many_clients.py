"""A FedAvg loop of 120 clients in one process beside a real daemon (issue 20).

Marker ``scale``: run by ``make integration``, not ``make test``.

The closest thing to a framework's simulation that needs no extra package (Flower's, with Ray,
runs in ``make integration``: tests/integration/test_flower_simulation.py): 120 clients each
train one SGD step from the global model and ``torch.save`` it into their own directory every
round, the server averages, the next round starts at once. The daemon, started on an empty
watch root, must discover every directory and take every file of every round exactly once.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.daemon.checkpoints import restored_bytes

pytestmark = [pytest.mark.slow, pytest.mark.scale]  # 120 clients: make integration

CLIENTS = 120
ROUNDS = 2


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def fedavg_rounds(watch_root: Path) -> list[Path]:
    """Run the federation; returns every file written, in order."""
    torch.manual_seed(0)
    global_state = net().state_dict()
    written = []
    for r in range(1, ROUNDS + 1):
        states = []
        for i in range(CLIENTS):
            model = net()
            model.load_state_dict(global_state)
            generator = torch.Generator().manual_seed(i)
            x = torch.randn(32, 16, generator=generator)
            y = torch.randint(0, 4, (32,), generator=generator)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            torch.optim.SGD(model.parameters(), lr=0.05).step()
            path = watch_root / f"client_{i}" / f"model_round_{r}.pth"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
            written.append(path)
            states.append(model.state_dict())
        global_state = {k: torch.stack([s[k] for s in states]).mean(0) for k in global_state}
    return written


def test_fedavg_of_120_clients_every_round_taken_once(make_daemon, tmp_path: Path) -> None:
    daemon = make_daemon()
    files = fedavg_rounds(daemon.watch_root)
    daemon.wait_event(
        lambda e: e["event"] == "checkpoint.ingested", count=len(files), timeout_s=120
    )
    taken = Counter(str(e["path"]) for e in daemon.ingested())
    assert taken == Counter(str(f) for f in files)  # every file of every round, once
    assert not [
        e for e in daemon.events() if e["event"] in ("ingest.failed", "checkpoint.rejected")
    ]
    for i in range(CLIENTS):
        assert daemon.rounds(str(i)) == list(range(1, ROUNDS + 1))
    for i in (0, CLIENTS - 1):
        last = daemon.watch_root / f"client_{i}" / f"model_round_{ROUNDS}.pth"
        assert restored_bytes(daemon.db(str(i)), ROUNDS) == last.read_bytes()
