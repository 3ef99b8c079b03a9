"""ServerApp: FedAvg that saves the global model each round, as Flower's docs show.

``<out-dir>/global/model_round_<server_round>.pth`` holds the aggregated state_dict; Flower saves
nothing by itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from chunkd_flower_it.task import initial_model

app = ServerApp()


class SavingFedAvg(FedAvg):
    """FedAvg that writes the aggregated model of every round to ``out_dir``."""

    def __init__(self, out_dir: Path, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.out_dir = out_dir

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            torch.save(
                arrays.to_torch_state_dict(), self.out_dir / f"model_round_{server_round}.pth"
            )
        return arrays, metrics


@app.main()
def main(grid: Grid, context: Context) -> None:
    nodes = int(context.run_config["min-nodes"])
    strategy = SavingFedAvg(
        Path(str(context.run_config["out-dir"])) / "global",
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_model(int(context.run_config["seed"])).state_dict()),
        num_rounds=int(context.run_config["num-server-rounds"]),
        train_config=ConfigRecord({"lr": 0.05}),
    )
