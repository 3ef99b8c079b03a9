"""Small real checkpoints for the daemon tests, and reading rounds back from a database."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from chunkd.restore import restore_round
from chunkd.store import ChunkStore


def save_model(
    path: Path, seed: int, *, elements: int = 4096, round_num: int | None = None, **extra: object
) -> bytes:
    """torch.save a small model at ``path``; returns the file's bytes.

    With ``round_num`` or ``extra`` the state_dict goes under ``model`` beside them
    (``{'cur_round': r, ...}`` as FederatedScope saves, ``{'train_conf': ...}`` as NVFlare)."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        "fc.weight": torch.randn(elements, generator=generator),
        "fc.bias": torch.randn(16, generator=generator),
    }
    if round_num is not None:
        extra = {"cur_round": round_num, **extra}
    obj: object = {**extra, "model": state} if extra else state
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path.read_bytes()


def restored_bytes(db: Path, round_num: int) -> bytes:
    out = io.BytesIO()
    with ChunkStore.open_reader(db) as store:
        restore_round(store, round_num, out.write)
    return out.getvalue()
