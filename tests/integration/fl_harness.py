"""Helpers of the framework-integration suite: checkpoints, restores through the socket, events."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from chunkd.restore import restore_round
from chunkd.store import ChunkStore


def save_model(path: Path, seed: int, *, elements: int = 4096, **extra: object) -> bytes:
    """torch.save a small state_dict at ``path`` (under ``model`` beside ``extra``); its bytes."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        "fc.weight": torch.randn(elements, generator=generator),
        "fc.bias": torch.randn(16, generator=generator),
    }
    obj: object = {**extra, "model": state} if extra else state
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path.read_bytes()


def restored_bytes(db: Path, round_num: int) -> bytes:
    """A round rebuilt straight from the database (no daemon)."""
    out = io.BytesIO()
    with ChunkStore.open_reader(db) as store:
        restore_round(store, round_num, out.write)
    return out.getvalue()


def stored_rounds(db: Path) -> list[int]:
    with ChunkStore.open_reader(db) as store:
        return store.round_numbers()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def restore_via_socket(daemon: Any, client: str, round_num: int | str, out: Path) -> bytes:
    """``chunkd restore --client C --round R -o OUT`` against the running daemon."""
    done = daemon.cli("restore", "--client", client, "--round", str(round_num), "-o", str(out))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return out.read_bytes()


def ingests(daemon: Any, client: str) -> list[dict[str, Any]]:
    """The daemon's ``checkpoint.ingested`` events for one client, in log order."""
    return [e for e in daemon.ingested(client)]


def wait_ingests(daemon: Any, client: str, count: int, timeout_s: float = 60) -> None:
    daemon.wait_event(
        lambda e: e["event"] == "checkpoint.ingested" and e.get("client") == client,
        count=count,
        timeout_s=timeout_s,
    )
