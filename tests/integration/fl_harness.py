"""Helpers of the framework-integration suite: checkpoints, restores through the socket, events."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

from chunkd.store import ChunkStore

# One builder for every suite: tests/daemon/checkpoints.py (loaded by path, as the conftest loads
# the daemon harness), re-exported here for the integration tests.
_CHECKPOINTS = Path(__file__).resolve().parents[1] / "daemon" / "checkpoints.py"
_spec = importlib.util.spec_from_file_location("chunkd_tests_checkpoints", _CHECKPOINTS)
assert _spec is not None and _spec.loader is not None
_checkpoints = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_checkpoints)
save_model = _checkpoints.save_model
restored_bytes = _checkpoints.restored_bytes


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
