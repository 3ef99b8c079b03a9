"""A real Flower federation on localhost (deployment engine), for the integration test.

One ``flower-superlink --insecure`` and N ``flower-supernode --insecure --node-config
"partition-id=i num-partitions=N"`` processes, each in its own session (process group) so that
the SuperExec and ClientApp/ServerApp processes they spawn are ended with them. ``flwr run``
submits the Flower App in ``flower_app/`` and, with ``--stream``, returns when the run ends.
``FLWR_HOME`` points into the test's temp directory: the SuperLink connection config, the
installed FAB and Flower's state never touch the user's ``~/.flwr``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent / "flower_app"
BIN = Path(sys.executable).parent
CONNECTION = "chunkd-it"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Federation:
    """The SuperLink and SuperNodes; :meth:`close` ends every process it started."""

    def __init__(self, root: Path, nodes: int) -> None:
        self.root = root
        self.nodes = nodes
        self.home = root / "flwr_home"
        self.home.mkdir(parents=True)
        self.port = free_port()
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list = []

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        proc = subprocess.Popen(
            [str(BIN / argv[0]), *argv[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.root,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def start(self, timeout_s: float = 60) -> Federation:
        self._spawn(
            "superlink",
            [
                "flower-superlink",
                "--insecure",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
        )
        self._wait_listening(timeout_s)
        for i in range(self.nodes):
            self._spawn(
                f"supernode{i}",
                [
                    "flower-supernode",
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{self.port}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    f"partition-id={i} num-partitions={self.nodes}",
                ],
            )
        deadline = time.monotonic() + timeout_s
        while self.log("superlink").count("Activated node_id") < self.nodes:
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"SuperNodes did not connect:\n{self.log('superlink')}")
            time.sleep(0.2)
        return self

    def _wait_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"SuperLink not listening:\n{self.log('superlink')}"
                    ) from None
                time.sleep(0.2)

    def _check_alive(self) -> None:
        for proc in self._procs:
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args} exited with {proc.returncode}")

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def run(self, out_dir: Path, rounds: int, seed: int, timeout_s: float = 900) -> str:
        """``flwr run`` the app until it ends; returns its output (the ServerApp's log)."""
        config = (
            f"out-dir='{out_dir}' num-server-rounds={rounds} seed={seed} min-nodes={self.nodes}"
        )
        done = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(APP_DIR),
                CONNECTION,
                "--run-config",
                config,
                "--stream",
            ],
            capture_output=True,
            env=self.env,
            cwd=self.root,
            timeout=timeout_s,
            check=False,
        )
        output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
        (self.root / f"flwr-run-seed{seed}.log").write_text(output)
        assert done.returncode == 0, output
        assert f"[ROUND {rounds}/{rounds}]" in output, output
        assert "Strategy execution finished" in output, output
        return output

    def close(self) -> None:
        """SIGTERM every process group, then SIGKILL what is left after a grace period."""
        for proc in self._procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self._procs:
            _signal_group(proc, signal.SIGKILL)  # children (SuperExec, apps) may outlive a leader
            if proc.poll() is None:
                proc.wait(timeout=10)
        for log in self._logs:
            log.close()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
