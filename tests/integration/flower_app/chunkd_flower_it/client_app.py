"""ClientApp: trains on its partition and saves its model, as a Flower user's client would.

The checkpoint goes to ``<out-dir>/client_<partition-id>/model_round_<server-round>.pth`` with a
plain ``torch.save`` (no rename, no fsync): chunkd must take it only once it is complete.
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from chunkd_flower_it.task import SAMPLES, Net, train

app = ClientApp()


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    partition_id = int(context.node_config["partition-id"])
    server_round = int(msg.content["config"]["server-round"])
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss = train(model, partition_id, int(context.run_config["seed"]))
    out = Path(str(context.run_config["out-dir"])) / f"client_{partition_id}"
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / f"model_round_{server_round}.pth")
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": SAMPLES}),
        }
    )
    return Message(content=content, reply_to=msg)
