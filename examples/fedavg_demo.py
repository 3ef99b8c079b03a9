"""A small federated-learning run beside a live chunkd: the README's quick start.

Starts ``chunkd serve`` on its embedded default configuration (no config file; data under
``$CHUNKD_HOME``, else ``~/.local/share/chunkd``), then runs FedAvg with one server process and
three client processes training a small CNN on synthetic data. Every round each client saves
``{'cur_round': r, 'model': state_dict}`` with ``torch.save`` into its own ``client_<i>/``
directory under the watch root, as an unmodified FederatedScope client would. chunkd notices
each file, chunks and deduplicates it; at the end the demo prints ``chunkd list`` and restores the
last round of client 1 through the socket, checking it is byte-identical to the client's file.

Run: ``python examples/fedavg_demo.py [--rounds 5] [--clients 3] [--keep-daemon]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from chunkd.config import load_settings


class SmallCNN(nn.Module):
    """A conv backbone with BatchNorm and a small classifier head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # every process starts from the same "pretrained" backbone
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def client_process(
    client_id: int, out_dir: Path, inbox: mp.Queue, outbox: mp.Queue, frozen_backbone: bool
) -> None:
    """One FL client: local training on its own synthetic shard, then a checkpoint per round."""
    torch.manual_seed(client_id)
    data = torch.randn(256, 1, 28, 28)
    labels = torch.randint(0, 10, (256,))
    model = SmallCNN()
    out_dir.mkdir(parents=True, exist_ok=True)
    outbox.put(("ready", client_id))
    while True:
        message = inbox.get()
        if message is None:
            return
        round_num, global_state = message
        model.load_state_dict(global_state)
        # Plain FedAvg trains every weight, so every byte of the file changes every round: chunkd
        # saves by coding each round against the next (delta) and compressing. With
        # --frozen-backbone the pretrained feature extractor stays fixed, as many deployments
        # do, and its repeated bytes are also stored only once.
        model.train()
        trained = model.parameters()
        if frozen_backbone:
            model.features.eval()
            trained = model.classifier.parameters()
        optimizer = torch.optim.SGD(trained, lr=0.02, momentum=0.9)
        for start in range(0, len(data), 32):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(
                model(data[start : start + 32]), labels[start : start + 32]
            )
            loss.backward()
            optimizer.step()
        state = model.state_dict()
        # Write-then-rename, as careful trainers do; chunkd also copes with in-place writes.
        final = out_dir / f"model_round_{round_num}.pth"
        tmp = final.with_suffix(".pth.tmp")
        torch.save({"cur_round": round_num, "model": state}, tmp)
        os.replace(tmp, final)
        # .item() of a detached loss: a scalar without autograd's "requires_grad" warning
        outbox.put((client_id, {k: v.clone() for k, v in state.items()}, loss.detach().item()))


def fedavg(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Average what the clients trained; pass through what they all left unchanged (the frozen
    backbone), since a float mean of equal values need not give back the same bits."""
    averaged = {}
    for key, first in states[0].items():
        if all(torch.equal(first, s[key]) for s in states[1:]):
            averaged[key] = first
            continue
        stacked = torch.stack([s[key].float() for s in states])
        averaged[key] = stacked.mean(0).to(first.dtype)
    return averaged


def say(text: str) -> None:
    """A progress line, flushed at once (stdout may be a pipe, as under `make run | tee`)."""
    print(text, flush=True)


def chunkd_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", *args],
        check=False,
        capture_output=True,
        text=True,
    )


def wait_for_daemon(daemon: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"chunkd serve exited with status {daemon.returncode}")
        if chunkd_cli("status", "--json").returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit("chunkd did not become ready in time")


def wait_for_rounds(clients: int, last_round: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listing = chunkd_cli("list", "--json")
        if listing.returncode == 0:
            stored = json.loads(listing.stdout)
            per_client = {
                c["client"]: max((r["round"] for r in c["rounds"]), default=0)
                for c in stored["clients"]
            }
            if all(per_client.get(str(i), 0) >= last_round for i in range(1, clients + 1)):
                return
        time.sleep(0.5)
    raise SystemExit("chunkd did not ingest every round in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument(
        "--keep-daemon",
        action="store_true",
        help="leave chunkd running after the demo (stop it with Ctrl-C)",
    )
    parser.add_argument(
        "--frozen-backbone",
        action="store_true",
        help="train only the classifier head (the backbone's bytes then repeat every round)",
    )
    args = parser.parse_args()

    settings = load_settings(None)
    # torch's optimizers create a compile cache (/tmp/torchinductor_<user> by default) and never
    # remove it: keep it in the demo's data home instead (the client processes inherit this)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(settings.watch_root.parent / "torch"))
    say(f"chunkd data home: {settings.watch_root.parent}\nwatch root: {settings.watch_root}\n")
    say("[demo] starting chunkd serve ...")
    daemon = subprocess.Popen([sys.executable, "-m", "chunkd.cli.main", "serve"])
    try:
        wait_for_daemon(daemon)
        say("[demo] chunkd is ready")
        ctx = mp.get_context("spawn")
        inboxes = [ctx.Queue() for _ in range(args.clients)]
        outbox = ctx.Queue()
        workers = [
            ctx.Process(
                target=client_process,
                args=(
                    i + 1,
                    settings.watch_root / f"client_{i + 1}",
                    inboxes[i],
                    outbox,
                    args.frozen_backbone,
                ),
            )
            for i in range(args.clients)
        ]
        say(f"[demo] starting {args.clients} client processes (each imports torch: a few seconds)")
        for w in workers:
            w.start()
        for _ in workers:
            _, client_id = outbox.get(timeout=300)
            say(f"[client {client_id}] ready")
        global_state = SmallCNN().state_dict()
        for round_num in range(1, args.rounds + 1):
            say(f"[fedavg] round {round_num}: global model sent to {len(inboxes)} clients")
            for inbox in inboxes:
                inbox.put((round_num, global_state))
            results = []
            for _ in workers:
                client_id, state, loss = outbox.get(timeout=300)
                say(f"[client {client_id}] round {round_num}: saved model_round_{round_num}.pth")
                results.append((client_id, state, loss))
            global_state = fedavg([state for _, state, _ in sorted(results, key=lambda r: r[0])])
            mean_loss = sum(loss for *_, loss in results) / len(results)
            say(f"[fedavg] round {round_num}: {len(results)} clients, mean loss {mean_loss:.3f}")
        for inbox in inboxes:
            inbox.put(None)
        for w in workers:
            w.join()

        wait_for_rounds(args.clients, args.rounds)
        print("\n$ chunkd list")
        print(chunkd_cli("list").stdout)
        original = settings.watch_root / "client_1" / f"model_round_{args.rounds}.pth"
        with tempfile.TemporaryDirectory() as tmp:
            restored = Path(tmp) / "restored.pth"
            print(f"$ chunkd restore --client 1 --round latest -o {restored}")
            result = chunkd_cli(
                "restore", "--client", "1", "--round", "latest", "-o", str(restored)
            )
            sys.stdout.write(result.stdout + result.stderr)
            if result.returncode != 0:
                return result.returncode
            same = (
                hashlib.sha256(restored.read_bytes()).hexdigest()
                == hashlib.sha256(original.read_bytes()).hexdigest()
            )
            print(
                f"restored round {args.rounds} of client 1 is byte-identical to {original}: "
                f"{'yes' if same else 'NO'}"
            )
            restored_model = torch.load(restored, weights_only=True)["model"]
            SmallCNN().load_state_dict(restored_model)
            print("the restored checkpoint loads into the model: yes")
            if not same:
                return 1
        if args.keep_daemon:
            print("\nchunkd keeps running; press Ctrl-C to stop it.")
            daemon.wait()
        return 0
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
