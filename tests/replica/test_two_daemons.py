"""The issue's "done when": two daemons with separate watch roots share one bucket.

A frozen backbone is uploaded once; every kept round of both hosts restores byte-identical with
``chunkd restore --replica`` after both hosts' databases are deleted; replica retention leaves
exactly the chunks the kept rounds need.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chunkd.replica.bucket import Bucket
from chunkd.replica.fetch import list_rounds, read_manifest
from chunkd.replica.layout import chunks_prefix, hash_of_chunk_key

from .conftest import WeedServer, harness, save_checkpoint

pytestmark = pytest.mark.slow

KEEP = 2


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., object]]:
    yield from harness.spawn_daemons(tmp_path)


def start_daemon(
    make_daemon: Callable[..., object], root: Path, host: str, url: str, endpoint: str
):
    daemon = make_daemon(
        root, start=False, compression="auto", chunk_num=8, max_chunk_bytes="64KiB"
    )
    with open(daemon.config, "a") as f:
        f.write(
            "\n[replica]\n"
            f'url = "{url}"\nendpoint = "{endpoint}"\nhost = "{host}"\n'
            f'replica_keep_rounds = {KEEP}\nprune_interval = "2s"\ngc_grace = "0s"\n'
        )
    return daemon.start()


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", *args], capture_output=True, timeout=120
    )


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


@pytest.mark.scale  # two daemons and a real S3 server: `make integration`
def test_two_hosts_share_a_bucket(
    make_daemon: Callable[..., object], bucket: Bucket, s3_server: WeedServer, tmp_path: Path
) -> None:
    url, endpoint = str(bucket.url), s3_server.endpoint
    a = start_daemon(make_daemon, tmp_path / "hostA", "hostA", url, endpoint)
    b = start_daemon(make_daemon, tmp_path / "hostB", "hostB", url, endpoint)
    originals: dict[tuple[str, str, int], str] = {}
    for daemon, host, client, rounds in (
        (a, "hostA", "1", range(1, 5)),
        (b, "hostB", "2", range(1, 4)),
    ):
        for r in rounds:
            path = save_checkpoint(
                daemon.watch_root / f"client_{client}" / f"model_round_{r}.pth",
                100 * r + int(client),
            )
            originals[(host, client, r)] = hashlib.sha256(path.read_bytes()).hexdigest()
            time.sleep(0.2)
    expected = {("hostA", "1"): [3, 4], ("hostB", "2"): [2, 3]}

    def kept() -> dict[tuple[str, str], list[int]]:
        found: dict[tuple[str, str], list[int]] = {}
        for e in list_rounds(bucket):
            found.setdefault((e.host, e.client_id), []).append(e.round_num)
        return found

    def swept() -> bool:
        if kept() != expected:
            return False
        needed = set().union(
            *(
                read_manifest(bucket, h, c, r).referenced_hashes()
                for (h, c), rs in expected.items()
                for r in rs
            )
        )
        present = {
            hash_of_chunk_key(bucket.url, o.key) for o in bucket.list(chunks_prefix(bucket.url))
        }
        return present == needed

    wait_for(swept, 120, "both hosts uploaded, retention and the sweep caught up")
    for daemon in (a, b):
        status = json.loads(daemon.cli("status", "--json").stdout)
        assert status["replica"]["lag_rounds"] == 0, status["replica"]
        assert status["replica"]["last_error"] is None
    uploads = [e for d in (a, b) for e in d.events() if e["event"] == "replica.uploaded"]
    assert len(uploads) >= 6  # a round pruned before its upload need not go up
    big = [e for e in uploads if e["bytes_uploaded"] > 150_000]
    assert len(big) == 1, "the 256 KiB frozen backbone went up more than once"
    assert all(e["chunks_new"] < e["chunks"] for e in uploads if e is not big[0])
    for daemon in (a, b):
        assert daemon.stop() == 0
        shutil.rmtree(daemon.watch_root)  # databases and checkpoints: the host is gone

    listed = cli("list", "--replica", url, "--endpoint", endpoint, "--json")
    assert listed.returncode == 0, listed.stderr
    clients = json.loads(listed.stdout)["clients"]
    assert {(c["host"], c["client"], c["round_count"]) for c in clients} == {
        ("hostA", "1", 2),
        ("hostB", "2", 2),
    }
    for (host, client), rounds in expected.items():
        for r in rounds:
            out = tmp_path / f"{host}-{client}-{r}.pth"
            done = cli(
                "restore", "--replica", url, "--endpoint", endpoint, "--host", host,
                "--client", client, "--round", str(r), "-o", str(out),
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert hashlib.sha256(out.read_bytes()).hexdigest() == originals[(host, client, r)]
    gone = cli("restore", "--replica", url, "--endpoint", endpoint, "--host", "hostA",
               "--client", "1", "--round", "1", "-o", str(tmp_path / "gone.pth"))  # fmt: skip
    assert gone.returncode == 3 and b"no round 1" in gone.stderr
    assert not (tmp_path / "gone.pth").exists()


def test_an_unreachable_bucket_never_holds_up_ingest(
    make_daemon: Callable[..., object], s3_env: None, tmp_path: Path
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    daemon = start_daemon(make_daemon, tmp_path / "host", "lonely", "s3://chunkd-nowhere/x", dead)
    for r in (1, 2, 3):
        save_checkpoint(daemon.watch_root / "client_1" / f"model_round_{r}.pth", r)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=3, timeout_s=60)
    daemon.wait_event(lambda e: e["event"] == "replica.failed", timeout_s=30)
    assert daemon.rounds("1") == [1, 2, 3]
    wait_for(
        # replica_keep_rounds = 2: round 1 would be pruned at once, so it is not owed
        lambda: json.loads(daemon.cli("status", "--json").stdout)["replica"]["lag_rounds"] == KEEP,
        30,
        "the lag reported",
    )
    replica = json.loads(daemon.cli("status", "--json").stdout)["replica"]
    assert replica["lag_bytes"] > 0 and "Could not connect" in replica["last_error"]
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 15  # a dead network does not hold up the exit
