"""A real FedAvg trajectory: the checkpoints the storage benchmarks code, from actual training.

Synthetic noise says nothing about how rounds of real training resemble each other, so the
codec and delta measurements run on files written the way an FL client writes them: a small CNN
with BatchNorm, trained with SGD (momentum, weight decay) on a learnable synthetic task (noisy,
shifted class prototypes, non-IID label split per client), FedAvg over ``rounds`` rounds. Every
round each client starts from the global model, trains one local epoch and ``torch.save``s its
``state_dict`` (fp32, and a bf16 copy of the same trajectory); the server averages.

``model="mlp"`` (:data:`MLP`) is FederatedScope's MLP instead: ``hidden_layers`` x ``width``
hidden units, each Linear followed by BatchNorm1d and ReLU (FederatedScope's ``MLP`` with
``batch_norm=True``), plain SGD at lr 0.01, 12 rounds x 3 clients, on the same task flattened.

The files are cached under ``benchmarks/out/trajectory`` (``trajectory_mlp``) with a
``meta.json`` describing how they were made; a second call with the same settings only reads the
meta. The meta also records, per round, the share of each client's weights that changed since its
previous round: the whole point of the trajectory is that in real FedAvg every weight moves every
round.

``python -m benchmarks.trajectory [--model mlp] [--rounds N --clients C --out DIR]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.runner import REPO_ROOT

DEFAULT_DIR = REPO_ROOT / "benchmarks" / "out" / "trajectory"
MLP_DIR = REPO_ROOT / "benchmarks" / "out" / "trajectory_mlp"
DTYPES = ("fp32", "bf16")
#: Bump when the model, task or training changes, so a cached trajectory is rebuilt.
VERSION = 1


@dataclass(frozen=True)
class Settings:
    clients: int = 3
    rounds: int = 10
    samples_per_client: int = 1024
    batch: int = 32
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: int = 32  # cnn: channels of the first conv (~1.2 M parameters at 32); mlp: units
    seed: int = 0
    version: int = VERSION
    model: str = "cnn"  # or "mlp"
    hidden_layers: int = 4  # mlp only


#: A seconds-long trajectory for the CI smoke run: every code path, tiny files.
QUICK = Settings(clients=2, rounds=3, samples_per_client=64, width=4)
#: FederatedScope's clients (issue 18): MLP 1024 x 4, SGD lr 0.01, 12 rounds x 3 clients.
MLP = Settings(model="mlp", rounds=12, lr=0.01, momentum=0.0, weight_decay=0.0, width=1024)
MLP_QUICK = Settings(
    model="mlp",
    clients=2,
    rounds=3,
    samples_per_client=64,
    lr=0.01,
    momentum=0.0,
    weight_decay=0.0,
    width=16,
)


def files(directory: Path, dtype: str, client: int) -> list[Path]:
    """One client's files in round order."""
    return sorted((directory / dtype / f"client{client}").glob("round_*.pth"))


def ensure(directory: Path = DEFAULT_DIR, settings: Settings | None = None) -> dict[str, Any]:
    """The trajectory's meta, generating the files first unless a matching cache exists."""
    settings = settings or Settings()
    meta_path = directory / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        cached = {**asdict(Settings()), **meta.get("settings", {})}  # older caches: a cnn
        complete = all(
            len(files(directory, d, c)) == settings.rounds
            for d in DTYPES
            for c in range(settings.clients)
        )
        if cached == asdict(settings) and complete:
            return meta
    meta = generate(directory, settings)
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def _model(settings: Settings) -> Any:
    import torch.nn as nn

    if settings.model == "mlp":
        layers: list[Any] = [nn.Flatten()]
        width_in = 3 * 16 * 16
        for _ in range(settings.hidden_layers):
            layers += [nn.Linear(width_in, settings.width), nn.BatchNorm1d(settings.width)]
            layers.append(nn.ReLU())
            width_in = settings.width
        return nn.Sequential(*layers, nn.Linear(width_in, 10))
    if settings.model != "cnn":
        raise ValueError(f"unknown model {settings.model!r}")
    w = settings.width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 16 -> 8
        nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * w),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8 -> 4
        nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False),
        nn.BatchNorm2d(4 * w),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * w * 16, 16 * w),
        nn.BatchNorm1d(16 * w),
        nn.ReLU(),
        nn.Linear(16 * w, 10),
    )


def _task(settings: Settings) -> tuple[list[tuple[Any, Any]], tuple[Any, Any]]:
    """Per-client (x, y) with a non-IID label split, and a shared test set."""
    import torch

    g = torch.Generator().manual_seed(settings.seed)
    # smooth class prototypes: low-resolution noise upsampled, so convolutions have structure
    protos = torch.nn.functional.interpolate(
        torch.randn(10, 3, 4, 4, generator=g), size=16, mode="bilinear", align_corners=False
    )

    def draw(labels: Any) -> Any:
        x = protos[labels] + 3.0 * torch.randn(len(labels), 3, 16, 16, generator=g)
        shifts = torch.randint(-2, 3, (2,), generator=g).tolist()
        return torch.roll(x, shifts=shifts, dims=(2, 3))

    clients = []
    for _ in range(settings.clients):
        prefs = torch.distributions.Dirichlet(torch.full((10,), 0.5)).sample()
        labels = torch.multinomial(prefs, settings.samples_per_client, replacement=True)
        clients.append((draw(labels), labels))
    test_y = torch.randint(0, 10, (1000,), generator=g)
    return clients, (draw(test_y), test_y)


class _SGD:
    """``torch.optim.SGD``'s single-tensor update (the CPU path), op for op, so the files are
    the same bytes: torch's optimizers import ``torch._dynamo`` on first use, 5-20 s of the
    smoke run's budget on a loaded machine, for a loop this short."""

    def __init__(self, params: list[Any], settings: Settings) -> None:
        self.params = params
        self.lr, self.momentum, self.weight_decay = (
            settings.lr,
            settings.momentum,
            settings.weight_decay,
        )
        self.buffers: list[Any] = [None] * len(params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        import torch

        with torch.no_grad():
            for i, p in enumerate(self.params):
                if p.grad is None:
                    continue
                grad = p.grad
                if self.weight_decay:
                    grad = grad.add(p, alpha=self.weight_decay)
                if self.momentum:
                    buf = self.buffers[i]
                    if buf is None:
                        buf = self.buffers[i] = torch.clone(grad).detach()
                    else:
                        buf.mul_(self.momentum).add_(grad)
                    grad = buf
                p.add_(grad, alpha=-self.lr)


def generate(directory: Path, settings: Settings) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    torch.set_num_threads(1)  # OpenMP spinning on shared, busy cores costs far more than it gains
    clients, (test_x, test_y) = _task(settings)
    global_model = _model(settings)
    n_params = sum(p.numel() for p in global_model.parameters())
    model = _model(settings)
    previous: list[dict[str, Any] | None] = [None] * settings.clients
    changed: list[dict[str, float]] = []
    accuracy: list[float] = []
    for dtype in DTYPES:
        for c in range(settings.clients):
            (directory / dtype / f"client{c}").mkdir(parents=True, exist_ok=True)
    for rnd in range(1, settings.rounds + 1):
        states = []
        for c, (x, y) in enumerate(clients):
            model.load_state_dict(global_model.state_dict())
            model.train()
            opt = _SGD(list(model.parameters()), settings)
            order = torch.randperm(len(y))
            for i in range(0, len(y), settings.batch):
                idx = order[i : i + settings.batch]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            states.append(state)
            name = f"round_{rnd:03d}.pth"
            torch.save(state, directory / "fp32" / f"client{c}" / name)
            half = {
                k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()
            }
            torch.save(half, directory / "bf16" / f"client{c}" / name)
            if previous[c] is not None:
                changed.append(_changed_share(previous[c], state, half, rnd, c))
            previous[c] = state
        averaged = {}
        for k, v in states[0].items():
            stacked = torch.stack([s[k] for s in states])
            averaged[k] = stacked.float().mean(0).to(v.dtype) if v.is_floating_point() else v
        global_model.load_state_dict(averaged)
        global_model.eval()
        with torch.no_grad():
            accuracy.append(float((global_model(test_x).argmax(1) == test_y).float().mean()))
    file_bytes = (directory / "fp32" / "client0" / "round_001.pth").stat().st_size
    return {
        "settings": asdict(settings),
        "parameters": n_params,
        "file_bytes_fp32": file_bytes,
        "file_bytes_bf16": (directory / "bf16" / "client0" / "round_001.pth").stat().st_size,
        "global_test_accuracy": accuracy,
        "changed": changed,
        "min_changed_fp32": min((c["fp32"] for c in changed), default=1.0),
        "min_changed_bf16": min((c["bf16"] for c in changed), default=1.0),
        "seconds": time.perf_counter() - started,
    }


def _changed_share(
    before: dict[str, Any], after: dict[str, Any], half: dict[str, Any], rnd: int, client: int
) -> dict[str, float]:
    """Share of floating-point elements whose stored value differs from the previous round."""
    import torch

    total = moved = moved_half = 0
    for k, v in after.items():
        if not v.is_floating_point():
            continue
        total += v.numel()
        moved += int((v != before[k]).sum())
        moved_half += int((half[k] != before[k].to(torch.bfloat16)).sum())
    return {"round": rnd, "client": client, "fp32": moved / total, "bf16": moved_half / total}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    p.add_argument("--out", type=Path, default=None, help="default: out/trajectory[_mlp]")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--clients", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="e.g. 0.002: late training")
    args = p.parse_args(argv)
    base = MLP if args.model == "mlp" else Settings()
    changes = {k: getattr(args, k) for k in ("rounds", "clients", "lr") if getattr(args, k)}
    directory = args.out or (MLP_DIR if args.model == "mlp" else DEFAULT_DIR)
    meta = ensure(directory, replace(base, **changes))
    summary = {k: v for k, v in meta.items() if k != "changed"}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
