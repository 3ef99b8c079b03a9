"""The Flower App of :mod:`benchmarks.flower_sim`: FedAvg over N simulated clients, each saving its
model with ``torch.save`` after every round, as a Flower user's ClientApp does.

Run by ``python -m benchmarks.flower_sim_app OUT_DIR CLIENTS ROUNDS`` in an interpreter that has
``flwr[simulation]`` (Ray); the simulation engine runs the ClientApps in Ray actors. Each client
writes ``OUT_DIR/client_<partition-id>/model_round_<server-round>.pth`` (a few KB: a tiny MLP).
One JSON line on stdout at the end: the wall time of each round as the ServerApp saw it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch import nn

SAMPLES = 32


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    partition_id = int(context.node_config["partition-id"])
    config = msg.content["config"]
    server_round = int(config["server-round"])
    model = net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    generator = torch.Generator().manual_seed(partition_id)
    x = torch.randn(SAMPLES, 16, generator=generator)
    y = torch.randint(0, 4, (SAMPLES,), generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    out = Path(str(config["out-dir"])) / f"client_{partition_id}"
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / f"model_round_{server_round}.pth")
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train_loss": float(loss), "num-examples": SAMPLES}),
        }
    )
    return Message(content=content, reply_to=msg)


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round's replies were aggregated."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.aggregated_at: list[float] = []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        result = super().aggregate_train(server_round, replies)
        self.aggregated_at.append(time.time())
        return result


def make_server_app(out_dir: Path, clients: int, rounds: int, timings: dict) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = TimedFedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=clients,
            min_available_nodes=clients,
        )
        torch.manual_seed(0)
        timings["started"] = time.time()
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(net().state_dict()),
            num_rounds=rounds,
            train_config=ConfigRecord({"out-dir": str(out_dir)}),
        )
        timings["aggregated_at"] = strategy.aggregated_at

    return app


def main(argv: list[str]) -> int:
    from flwr.simulation import run_simulation

    out_dir, clients, rounds = Path(argv[0]), int(argv[1]), int(argv[2])
    timings: dict = {}
    started = time.time()
    run_simulation(
        server_app=make_server_app(out_dir, clients, rounds, timings),
        client_app=client_app,
        num_supernodes=clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "include_dashboard": False},
        },
    )
    timings["wall_s"] = time.time() - started
    timings["began"] = started
    sys.stdout.write(json.dumps(timings) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
