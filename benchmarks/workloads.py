"""Inputs: realistic multi-tensor checkpoints and 10-round series, written with ``torch.save``.

One architecture serves every input so the figures compare like with like: a *backbone* holding
90% of the bytes and a *head* holding 10%, each a run of weight matrices of 1-16 MiB (cycling
through :data:`LAYER_MIB`, so chunk boundaries fall inside and across tensors), their biases, and
a BatchNorm block (weight, bias, running_mean, running_var, num_batches_tracked) every fourth
layer. That is closer to a real ``state_dict`` than one giant tensor: hundreds of storages, some
tiny, an int64 buffer among the floats.

Weights evolve in a float32 *master* copy and are cast to the saved dtype at each save, as
mixed-precision training does; a bfloat16 series therefore moves exactly where a float32 one does.

Series (rounds 1..10, files ``model_round_<r>.pth``):

* ``fedavg``: every float weight moves a little each round (``w += 1e-3 * 0.02 * N(0, 1)``), so
  no chunk repeats: the worst case for deduplication;
* ``frozen``: only the head trains; the backbone's 90% of the bytes stay identical;
* ``nonpart``: FedAvg-like on rounds the client takes part in; on the others (:data:`SKIPPED`)
  the previous model is saved again under the new round's name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

MIB = 1 << 20
#: Weight-matrix sizes cycled through, in MiB of float32 (scaled down for tiny models).
LAYER_MIB = (16, 4, 1, 8, 2, 12, 6, 3)
#: Columns of every weight matrix (a hidden size); rows follow from the layer's byte size.
HIDDEN = 1024
BACKBONE_SHARE = 0.9
ROUNDS = 10
STEP = 1e-3 * 0.02
SERIES_KINDS = ("fedavg", "frozen", "nonpart")
#: Rounds of the ``nonpart`` series in which the client does not take part.
SKIPPED = frozenset({3, 5, 6, 8, 10})
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class SeriesFile:
    round_num: int
    path: Path
    repeated: bool  # the previous round's tensors saved again


def _layer_plan(prefix: str, total_bytes: int, itemsize: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a run of layers filling ``total_bytes`` of ``itemsize`` elements."""
    scale = min(1.0, total_bytes / (64 * MIB))
    hidden = HIDDEN if scale >= 1.0 else max(16, int(HIDDEN * scale))
    plan: list[tuple[str, tuple[int, ...]]] = []
    remaining = total_bytes
    i = 0
    while remaining > hidden * itemsize * 2:
        want = max(int(LAYER_MIB[i % len(LAYER_MIB)] * MIB * scale), hidden * itemsize)
        rows = max(1, min(want, remaining) // (hidden * itemsize) - 1)
        plan.append((f"{prefix}.{i}.weight", (rows, hidden)))
        plan.append((f"{prefix}.{i}.bias", (rows,)))
        remaining -= (rows * hidden + rows) * itemsize
        if i % 4 == 3:
            for buf in ("weight", "bias", "running_mean", "running_var"):
                plan.append((f"{prefix}.{i}.norm.{buf}", (rows,)))
            plan.append((f"{prefix}.{i}.norm.num_batches_tracked", ()))
            remaining -= 4 * rows * itemsize + 8
        i += 1
    return plan


def model_plan(total_bytes: int, itemsize: int) -> list[tuple[str, tuple[int, ...]]]:
    """The whole architecture: backbone (90% of the bytes) then head (10%)."""
    backbone = int(total_bytes * BACKBONE_SHARE)
    return _layer_plan("backbone", backbone, itemsize) + _layer_plan(
        "head", total_bytes - backbone, itemsize
    )


class Model:
    """A float32 master ``state_dict`` that evolves round by round and saves in any dtype."""

    def __init__(self, total_bytes: int, dtype: str, seed: int = 0) -> None:
        self.dtype = DTYPES[dtype]
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        self.gen = torch.Generator().manual_seed(seed)
        self.master: dict[str, torch.Tensor] = {}
        for name, shape in model_plan(total_bytes, itemsize):
            if name.endswith("num_batches_tracked"):
                self.master[name] = torch.tensor(1000 + seed, dtype=torch.int64)
            elif name.endswith("running_var"):
                self.master[name] = 1.0 + 0.1 * torch.rand(shape, generator=self.gen)
            else:
                self.master[name] = 0.02 * torch.randn(shape, generator=self.gen)

    def step(self, *, head_only: bool = False) -> None:
        """One round of training: every float tensor (or only the head's) moves a little."""
        for name, t in self.master.items():
            if head_only and not name.startswith("head."):
                continue
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=self.gen), alpha=STEP)
            else:
                t.add_(1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            k: v if not v.is_floating_point() else v.to(self.dtype) for k, v in self.master.items()
        }

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path)
        return path


def write_checkpoint(path: Path, total_bytes: int, dtype: str, seed: int = 0) -> Path:
    """One checkpoint of about ``total_bytes`` (the throughput inputs)."""
    return Model(total_bytes, dtype, seed).save(path)


def write_series(
    kind: str, directory: Path, total_bytes: int, dtype: str, rounds: int = ROUNDS
) -> Iterator[SeriesFile]:
    """Write the series round by round, yielding each file as soon as it is on disk."""
    if kind not in SERIES_KINDS:
        raise ValueError(f"unknown series {kind!r}")
    model = Model(total_bytes, dtype, seed=1)
    for r in range(1, rounds + 1):
        repeated = kind == "nonpart" and r in SKIPPED
        if r > 1 and not repeated:
            model.step(head_only=kind == "frozen")
        yield SeriesFile(r, model.save(directory / f"model_round_{r}.pth"), repeated)


def head_share(total_bytes: int, dtype: str) -> float:
    """The fraction of tensor bytes that the ``frozen`` series changes (for the report)."""
    itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
    sizes = {
        n: torch.Size(s).numel() * (8 if n.endswith("tracked") else itemsize)
        for n, s in model_plan(total_bytes, itemsize)
    }
    return sum(v for n, v in sizes.items() if n.startswith("head.")) / sum(sizes.values())
