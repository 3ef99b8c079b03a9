"""A real ``chunkd serve`` process per test: its own config, watch root, socket and log file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chunkd.store import ChunkStore

SMALL_SETTINGS = {
    "settle_delay": "0.3s",
    "retention_interval": "300s",
    "rescan_interval": "300s",
    "chunk_keep_rounds": 0,
    "log_format": "json",
}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


class DaemonProcess:
    """A running daemon and what a test needs to watch it."""

    def __init__(self, root: Path, overrides: dict[str, object]) -> None:
        self.root = root
        self.watch_root = root / "fl"
        self.socket = root / "run" / "chunkd.sock"
        self.config = root / "chunkd.toml"
        self.log_path = root / "daemon.log"
        settings = {
            **SMALL_SETTINGS,
            "watch_root": str(self.watch_root),
            "socket": str(self.socket),
            **overrides,
        }
        self.config.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in settings.items()))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file = None

    def start(self, *, wait_ready: bool = True, env: dict[str, str] | None = None) -> DaemonProcess:
        readies = sum(1 for e in self.events() if e["event"] == "daemon.ready")
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chunkd.cli.main", "serve", "--config", str(self.config)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        if wait_ready:
            self.wait_event(lambda e: e["event"] == "daemon.ready", timeout_s=30, count=readies + 1)
        return self

    def events(self) -> list[dict[str, object]]:
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "<not json>", "line": line})
        return out

    def wait_event(
        self,
        predicate: Callable[[dict[str, object]], bool],
        *,
        timeout_s: float = 30,
        count: int = 1,
    ) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout_s
        while True:
            matched = [e for e in self.events() if predicate(e)]
            if len(matched) >= count:
                return matched
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}:\n{self.log_path.read_text()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {count} events; have {len(matched)}:\n"
                    + "\n".join(json.dumps(e) for e in self.events()[-40:])
                )
            time.sleep(0.1)

    def ingested(self, client: str | None = None) -> list[dict[str, object]]:
        return [
            e
            for e in self.events()
            if e["event"] == "checkpoint.ingested" and (client is None or e.get("client") == client)
        ]

    def db(self, client: str) -> Path:
        return self.watch_root / f"client_{client}" / f"client_{client}_chunks.db"

    def rounds(self, client: str) -> list[int]:
        with ChunkStore.open_reader(self.db(client)) as store:
            return store.round_numbers()

    def cli(self, *args: str, input_bytes: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "chunkd.cli.main", *args, "--socket", str(self.socket)],
            capture_output=True,
            input=input_bytes,
            timeout=120,
            check=False,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout_s)
        if self._log_file is not None:
            self._log_file.close()
        return code


def spawn_daemons(default_root: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """A factory of daemons (``root=None, start=True, **config``), all killed at the end.

    Shared by this suite's ``make_daemon`` and the reliability suite's ``daemon_factory``.
    """
    started: list[DaemonProcess] = []

    def factory(root: Path | None = None, start: bool = True, **overrides: object) -> DaemonProcess:
        (root or default_root).mkdir(parents=True, exist_ok=True)
        daemon = DaemonProcess(root or default_root, overrides)
        daemon.watch_root.mkdir(parents=True, exist_ok=True)
        started.append(daemon)
        return daemon.start() if start else daemon

    yield factory
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
        if daemon._log_file is not None:
            daemon._log_file.close()


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    yield from spawn_daemons(tmp_path)


def sha256_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
