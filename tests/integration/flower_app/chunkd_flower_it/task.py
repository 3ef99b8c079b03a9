"""The model and the synthetic data, shared by the ServerApp, the ClientApp and the test."""

from __future__ import annotations

import torch
from torch import nn

#: Samples per partition: enough for a few optimizer steps, small enough for a 2-core CI box.
SAMPLES = 64
BATCH = 16


class Net(nn.Module):
    """A small CNN with BatchNorm, so checkpoints carry running stats and num_batches_tracked."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def initial_model(seed: int) -> Net:
    torch.manual_seed(seed)
    return Net()


def partition(partition_id: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic 16x16 images and labels for one partition; ``seed`` tells runs apart."""
    generator = torch.Generator().manual_seed(1000 * seed + partition_id)
    labels = torch.randint(0, 10, (SAMPLES,), generator=generator)
    images = torch.randn(SAMPLES, 1, 16, 16, generator=generator) + labels.view(-1, 1, 1, 1) / 5
    return images, labels


def train(model: Net, partition_id: int, seed: int) -> float:
    """One local epoch of SGD; returns the mean loss."""
    images, labels = partition(partition_id, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    total = 0.0
    for start in range(0, SAMPLES, BATCH):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(
            model(images[start : start + BATCH]), labels[start : start + BATCH]
        )
        loss.backward()
        optimizer.step()
        total += float(loss)
    return total / (SAMPLES // BATCH)


def fixed_input() -> torch.Tensor:
    """The input the test compares model outputs on."""
    return torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(7))
