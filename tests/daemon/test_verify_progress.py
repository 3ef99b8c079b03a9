"""Issue 21, friction 6: ``chunkd verify`` through the daemon moves its bar while one client is
checked (it stayed at 0% until the end), from ``status``'s ``verifying``."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
import time

from chunkd.ingest import IngestOptions, ingest_file
from chunkd.store import ChunkStore
from tests.daemon.checkpoints import save_model

ROUNDS = 20
ELEMENTS = 3_000_000  # 12 MB a round: the verify takes about a second; the bar asks 0.2 s in


def big_client(daemon) -> None:
    """One client whose verify takes a few seconds: stored uncompressed, in many chunks."""
    directory = daemon.watch_root / "client_1"
    staging = daemon.root / "staging"
    options = IngestOptions(chunk_num=10, max_chunk_bytes=64 << 10, compression="none", delta=False)
    directory.mkdir(parents=True)
    with ChunkStore.open_writer(daemon.db("1")) as store:
        for r in range(1, ROUNDS + 1):
            path = staging / f"model_round_{r}.pth"
            save_model(path, r, elements=ELEMENTS)
            ingest_file(path, store, options)
            path.unlink()


def test_the_verify_bar_moves_while_one_client_is_checked(make_daemon) -> None:
    daemon = make_daemon(start=False)
    big_client(daemon)
    daemon.start()
    main, terminal = pty.openpty()
    command = [sys.executable, "-m", "chunkd.cli.main", "verify", "--socket", str(daemon.socket)]
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal
    )
    os.close(terminal)
    drawn: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(main, drawn))
    reader.start()
    seen: list[tuple[int, int]] = []
    while proc.poll() is None:  # what status says meanwhile, as the bar asks it
        status = json.loads(daemon.cli("status", "--json").stdout)
        seen += [(v["done"], v["total"]) for v in status["verifying"] if v["client"] == "1"]
        time.sleep(0.1)
    reader.join()
    assert proc.wait() == 0
    assert proc.stdout is not None and b"client 1: OK" in proc.stdout.read()
    assert any(0 < done < total for done, total in seen), seen
    assert json.loads(daemon.cli("status", "--json").stdout)["verifying"] == []
    percents = {int(p) for p in re.findall(rb"\s(\d+)%", b"".join(drawn))}
    assert any(0 < p < 100 for p in percents), b"".join(drawn)[-500:]


def _read_all(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        into.append(chunk)
    os.close(fd)
