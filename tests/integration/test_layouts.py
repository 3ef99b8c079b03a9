"""Framework layouts through the real daemon: where each framework writes, and how rounds come out.

Each framework's files are written the way it writes them (file names, containers, in place with
no rename or fsync), one version at a time as training would. Checked for each: every version is
ingested exactly once, under the round the README promises, and restores byte-identical through
the socket (README, "Using chunkd with your FL framework").
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from fl_harness import ingests, restore_via_socket, save_model, stored_rounds
from torch import nn


def _wait_round(daemon: Any, client: str, round_num: int) -> None:
    daemon.wait_event(
        lambda e: (
            e["event"] == "checkpoint.ingested"
            and e.get("client") == client
            and e.get("round") == round_num
        ),
        timeout_s=60,
    )


def _check(daemon: Any, client: str, db: Path, versions: dict[int, tuple[Path, bytes]], out: Path):
    """Each version ingested once under its round; each round restores byte-identical."""
    seen = sorted((e["round"], e["path"]) for e in ingests(daemon, client))
    assert seen == sorted((r, str(path)) for r, (path, _) in versions.items())
    assert stored_rounds(db) == sorted(versions)
    assert [e for e in daemon.events() if e["event"] == "checkpoint.rejected"] == []
    out.mkdir(exist_ok=True)
    for r, (_, data) in versions.items():
        assert restore_via_socket(daemon, client, r, out / f"{client}-{r}.pth") == data


def test_federatedscope_rounds_from_the_name_from_zero(make_daemon, tmp_path):
    # FederatedScope writes <cwd>/tmp/client_<ID>/client_<ID>_round_<r>.pth: watch_root = <cwd>/tmp.
    daemon = make_daemon()
    versions: dict[str, dict[int, tuple[Path, bytes]]] = {"1": {}, "2": {}}
    for r in range(4):  # rounds count from 0
        for client in versions:
            path = daemon.watch_root / f"client_{client}" / f"client_{client}_round_{r}.pth"
            data = save_model(path, seed=10 * r + int(client), cur_round=r)
            versions[client][r] = (path, data)
    for client in versions:
        for r in range(4):
            _wait_round(daemon, client, r)
    for client, by_round in versions.items():
        db = daemon.watch_root / f"client_{client}" / f"client_{client}_chunks.db"
        _check(daemon, client, db, by_round, tmp_path / "restored")


def test_federatedscope_one_file_round_from_cur_round(make_daemon, tmp_path):
    # The same containers under one file name: the round comes from 'cur_round' inside.
    daemon = make_daemon()
    path = daemon.watch_root / "client_1" / "client_1_model.pth"
    versions = {}
    for r in range(4):
        versions[r] = (path, save_model(path, seed=r, cur_round=r))
        _wait_round(daemon, "1", r)
    _check(daemon, "1", daemon.db("1"), versions, tmp_path / "restored")


def test_nvflare_overwritten_global_model_is_one_round_per_version(make_daemon, tmp_path):
    # NVFlare's persistor overwrites <workspace>/server/simulate_job/app_server/FL_global_model.pt
    # every round, and best_FL_global_model.pt beside it when validation improves.
    daemon = make_daemon(
        client_dir_pattern=r"app_(?P<client>[A-Za-z0-9_.-]+)",
        file_patterns=["FL_global_model.pt"],
    )
    app_dir = daemon.watch_root / "server" / "simulate_job" / "app_server"
    path = app_dir / "FL_global_model.pt"
    versions = {}
    for version in range(1, 5):  # no round in the name or the file: each version is the next
        data = save_model(path, seed=version, train_conf={"phase": "train"})
        versions[version] = (path, data)
        if version == 2:
            save_model(app_dir / "best_FL_global_model.pt", seed=99, train_conf={})
        _wait_round(daemon, "server", version)
    _check(daemon, "server", app_dir / "client_server_chunks.db", versions, tmp_path / "restored")


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


def test_plain_torch_loop_overwriting_checkpoint(make_daemon, tmp_path):
    # PyTorch's tutorial: torch.save({'epoch', 'model_state_dict', 'optimizer_state_dict', 'loss'},
    # 'checkpoint.pth') every epoch; and a loop saving only the state_dict, which has no round.
    daemon = make_daemon()
    torch.manual_seed(0)
    model = _Tiny()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    with_epoch = daemon.watch_root / "client_tutorial" / "checkpoint.pth"
    bare = daemon.watch_root / "client_bare" / "checkpoint.pth"
    by_epoch, by_version = {}, {}
    for directory in (with_epoch.parent, bare.parent):
        directory.mkdir()
    for epoch in range(3):
        optimizer.zero_grad()
        loss = model(torch.randn(16, 32)).pow(2).mean()
        loss.backward()
        optimizer.step()
        checkpoint = {
            "epoch": epoch,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "loss": loss.item(),
        }
        torch.save(checkpoint, with_epoch)
        by_epoch[epoch] = (with_epoch, with_epoch.read_bytes())
        _wait_round(daemon, "tutorial", epoch)
        torch.save(model.state_dict(), bare)
        by_version[epoch + 1] = (bare, bare.read_bytes())
        _wait_round(daemon, "bare", epoch + 1)
    _check(daemon, "tutorial", daemon.db("tutorial"), by_epoch, tmp_path / "restored")
    _check(daemon, "bare", daemon.db("bare"), by_version, tmp_path / "restored")


def test_readme_restore_into_a_model_in_three_lines(make_daemon):
    # README, "Restoring a round into a model": restore to stdout, torch.load, load_state_dict.
    daemon = make_daemon()
    model = _Tiny()
    path = daemon.watch_root / "client_1" / "model_round_5.pth"
    path.parent.mkdir()
    torch.save({"cur_round": 5, "model": model.state_dict()}, path)
    _wait_round(daemon, "1", 5)
    argv = [sys.executable, "-m", "chunkd.cli.main", "restore", "--socket", str(daemon.socket)]
    raw = subprocess.run(
        [*argv, "--client", "1", "--round", "5", "-o", "-"], check=True, capture_output=True
    ).stdout
    fresh = _Tiny()
    fresh.load_state_dict(torch.load(io.BytesIO(raw), weights_only=True)["model"])
    assert raw == path.read_bytes()
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(3))
    model.eval()
    fresh.eval()
    assert torch.equal(fresh(x), model(x))
