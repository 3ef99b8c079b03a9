"""The reliability campaign's shared harness (GitHub issue 6).

Every scenario here runs chunkd the way an operator does: a real ``chunkd serve`` process (the
:class:`DaemonProcess` of ``tests/daemon/conftest.py``, loaded from that file so that both suites
drive the daemon identically), real files, real signals, real mounts. What the scenarios share:

* ``--torture`` (or ``CHUNKD_TORTURE=1``): the full-size campaign (``make torture``); without it,
  each scenario runs its short form, which is what CI runs;
* :class:`Figures`: every scenario records its figures (trials, failures, cases, latencies); they
  are written as JSON next to the test's ``tmp_path`` and under the session's base temp directory
  (``reliability-figures/``), and printed in the terminal summary, which is where
  ``docs/RELIABILITY.md`` takes its numbers from;
* checkpoint builders, a raw socket client, database snapshots, tmpfs mounts, and an inotify
  probe that proves a file outside the configured paths was never opened.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import importlib.util
import io
import json
import math
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chunkd.restore import restore_round
from chunkd.store import ChunkStore
from chunkd.verify import VerifyReport, verify_store

# -- the daemon harness of tests/daemon, reused ------------------------------------------------

_DAEMON_HARNESS = Path(__file__).resolve().parents[1] / "daemon" / "conftest.py"
_spec = importlib.util.spec_from_file_location("chunkd_tests_daemon_harness", _DAEMON_HARNESS)
assert _spec is not None and _spec.loader is not None
_harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_harness)
DaemonProcess = _harness.DaemonProcess

#: Answers a hostile request may get; ``internal`` is deliberately absent (it means a bug).
CLIENT_ERROR_CODES = frozenset(
    {"bad_request", "unknown_command", "not_found", "forbidden", "busy", "bad_checkpoint"}
)


# -- options, markers, figures ---------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--torture",
        action="store_true",
        default=False,
        help="chunkd reliability: run the full-size campaign (make torture), not the CI forms",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "torture: scales with --torture (full size) or runs its short CI form"
    )


#: pytest-timeout's limit for a ``torture``-marked test in the full campaign (the CI default, 300 s
#: from pyproject.toml, still applies to the short forms).
TORTURE_TIMEOUT_S = 3600


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not torture_enabled(config):
        return
    for item in items:
        if item.get_closest_marker("torture") is not None:
            item.add_marker(pytest.mark.timeout(TORTURE_TIMEOUT_S))


def torture_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--torture", default=False)) or (
        os.environ.get("CHUNKD_TORTURE") == "1"
    )


@pytest.fixture(scope="session")
def torture(request: pytest.FixtureRequest) -> bool:
    """True for the full campaign (``--torture``), False for the short CI forms."""
    return torture_enabled(request.config)


_FIGURES: dict[str, dict[str, Any]] = {}


@dataclass
class Figures:
    """Collects one scenario's figures; ``save`` writes and remembers them."""

    name: str
    directory: Path
    session_dir: Path
    data: dict[str, Any] = field(default_factory=dict)

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def update(self, **values: Any) -> None:
        self.data.update(values)

    def save(self) -> Path:
        text = json.dumps(self.data, indent=2, sort_keys=True, default=str)
        path = self.directory / "figures.json"
        path.write_text(text)
        self.session_dir.mkdir(parents=True, exist_ok=True)
        (self.session_dir / f"{self.name}.json").write_text(text)
        _FIGURES[self.name] = dict(self.data)
        print(f"\n[chunkd reliability] {self.name}: {json.dumps(self.data, default=str)}")
        return path


@pytest.fixture
def figures(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Figures:
    name = request.node.name.replace("/", "_")
    session_dir = tmp_path_factory.getbasetemp() / "reliability-figures"
    return Figures(name, tmp_path, session_dir, {"torture": torture_enabled(request.config)})


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures go to ``build/reliability-figures.json``; the terminal shows them in full
    only for the campaigns (``-m campaign``, ``--torture``), where they are the result: at the
    end of ``make test`` fifty lines of JSON buried the warnings above them (issue 21)."""
    if not _FIGURES:
        return
    config = terminalreporter.config
    path = config.rootpath / "build" / "reliability-figures.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(_FIGURES, indent=2, sort_keys=True, default=str) + "\n")
    campaign = torture_enabled(config) or "campaign" in str(config.getoption("-m") or "")
    if not campaign or "not campaign" in str(config.getoption("-m") or ""):
        shown = path.relative_to(config.rootpath)
        terminalreporter.write_line(f"chunkd reliability figures: {len(_FIGURES)} in {shown}")
        return
    terminalreporter.section("chunkd reliability figures")
    for name, data in sorted(_FIGURES.items()):
        terminalreporter.write_line(f"{name}: {json.dumps(data, sort_keys=True, default=str)}")


# -- checkpoints ---------------------------------------------------------------------------------


def model_state(seed: int, nbytes: int, *, frozen_bytes: int = 0) -> dict[str, Any]:
    """A state_dict of about ``nbytes`` of float32 tensors, random per ``seed``.

    ``frozen_bytes`` of it (a "backbone") are the same for every seed, as in fine-tuning, so
    consecutive rounds share chunks.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    if frozen_bytes:
        frozen = torch.Generator().manual_seed(12345)
        state["backbone.weight"] = torch.randn(max(1, frozen_bytes // 4), generator=frozen)
    trainable = max(1, (nbytes - frozen_bytes) // 4)
    state["head.weight"] = torch.randn(trainable, generator=generator)
    state["head.bias"] = torch.randn(16, generator=generator)
    state["bn.num_batches_tracked"] = torch.tensor(seed)
    return state


def checkpoint_bytes(obj: object) -> bytes:
    """``torch.save`` into memory (top folder ``archive``)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def model_bytes(seed: int, nbytes: int, *, frozen_bytes: int = 0) -> bytes:
    return checkpoint_bytes(model_state(seed, nbytes, frozen_bytes=frozen_bytes))


def write_atomic(path: Path, data: bytes) -> None:
    """What careful FL clients do: write a temp name, then rename onto the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_direct(path: Path, data: bytes, pieces: int = 1) -> None:
    """What careless clients do: write the final name in place, possibly in several writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    step = max(1, -(-len(data) // pieces))
    with open(path, "wb") as f:
        for start in range(0, len(data), step):
            f.write(data[start : start + step])
            f.flush()


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


# -- databases ---------------------------------------------------------------------------------


def restore_bytes(db: Path, round_num: int) -> bytes:
    """Rebuild a round from the database file alone (what ``chunkd restore --db`` does)."""
    out = io.BytesIO()
    with ChunkStore.open_reader(db) as store:
        restore_round(store, round_num, out.write)
    return out.getvalue()


def verify_db(db: Path) -> VerifyReport:
    with ChunkStore.open_reader(db) as store:
        return verify_store(store)


def query(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """``sql`` on a read-only connection of its own (any reader's view)."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def round_shas(db: Path) -> dict[int, str]:
    return dict(query(db, "SELECT round_num, file_sha256 FROM rounds ORDER BY round_num"))


def fingerprint(db: Path) -> tuple[object, ...]:
    """What a rejected file must leave unchanged: rounds, row counts, file hash."""
    return (
        tuple(round_shas(db).items()),
        query(db, "SELECT COUNT(*) FROM chunk_data")[0][0],
        query(db, "SELECT COUNT(*) FROM chunk_metadata")[0][0],
        hashlib.sha256(db.read_bytes()).hexdigest(),
    )


@contextlib.contextmanager
def snapshot(db: Path) -> Iterator[None]:
    """Hold a SHARED lock on ``db``: readers see one state while the daemon's writer waits.

    The daemon keeps running (its writer retries with a busy timeout); checks made inside see
    no commit half-way, so a round that retention removes cannot vanish in the middle of them.
    """
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        yield
    finally:
        conn.close()


# -- the socket ----------------------------------------------------------------------------------


@dataclass
class Reply:
    """One answer line, decoded; ``raw`` is the line as received."""

    raw: bytes
    obj: Any

    @property
    def ok(self) -> bool:
        return isinstance(self.obj, dict) and self.obj.get("ok") is True

    @property
    def code(self) -> str | None:
        if isinstance(self.obj, dict) and isinstance(self.obj.get("error"), dict):
            return self.obj["error"].get("code")
        return None


def connect(path: Path, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    sock.connect(str(path))
    return sock


def read_line(sock: socket.socket, buf: bytearray, limit: int = 1 << 26) -> bytes | None:
    """The next ``\\n``-terminated line from ``sock`` (``buf`` keeps what follows); None at EOF."""
    while (end := buf.find(b"\n")) < 0:
        data = sock.recv(1 << 16)
        if not data:
            return None
        buf += data
        if len(buf) > limit:
            raise AssertionError(f"answer line over {limit} bytes")
    line = bytes(buf[:end])
    del buf[: end + 1]
    return line


def read_exact(sock: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        data = sock.recv(1 << 20)
        if not data:
            raise AssertionError(f"connection closed {n - len(buf)} bytes short")
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


def read_answer(sock: socket.socket, buf: bytearray) -> tuple[Reply, bytes | None] | None:
    """One answer: its line and, for a frame stream, the payload (trailer checked)."""
    line = read_line(sock, buf)
    if line is None:
        return None
    reply = Reply(line, json.loads(line))
    result = reply.obj.get("result") if reply.ok else None
    if not (isinstance(result, dict) and result.get("transfer") == "frames"):
        return reply, None
    payload = bytearray()
    digest = hashlib.sha256()
    while True:
        (length,) = struct.unpack(">I", read_exact(sock, buf, 4))
        if length == 0:
            trailer = read_exact(sock, buf, 32)
            assert trailer == digest.digest(), "frame trailer does not match the payload"
            return reply, bytes(payload)
        if length == 0xFFFFFFFF:
            error_line = read_line(sock, buf)
            assert error_line is not None, "stream aborted without an error line"
            return Reply(error_line, json.loads(error_line)), None
        assert length <= 1 << 20, f"frame of {length} bytes"
        data = read_exact(sock, buf, length)
        digest.update(data)
        payload += data


def request(path: Path, obj: object, timeout_s: float = 30.0) -> tuple[Reply, bytes | None]:
    """One request on a fresh connection; its answer (and frame payload, if any)."""
    with connect(path, timeout_s) as sock:
        sock.sendall(json.dumps(obj).encode() + b"\n")
        answer = read_answer(sock, bytearray())
    if answer is None:
        raise AssertionError(f"the daemon closed the connection without answering {obj!r}")
    return answer


def ping(path: Path, timeout_s: float = 5.0) -> float:
    """Seconds a ``ping`` took; AssertionError unless it got ``pong``."""
    started = time.monotonic()
    reply, _ = request(path, {"cmd": "ping"}, timeout_s)
    assert reply.ok and reply.obj["result"].get("pong") is True, reply.raw
    return time.monotonic() - started


def restore_via_daemon(path: Path, client: str, round_num: int | str) -> bytes:
    reply, payload = request(
        path, {"cmd": "restore", "client": client, "round": round_num, "transfer": "frames"}
    )
    assert reply.ok and payload is not None, reply.raw
    return payload


# -- processes, mounts, inotify ------------------------------------------------------------------


class LogTail:
    """New complete JSON lines of the daemon's log since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.rest = b""

    def new_events(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        data = self.rest + data
        lines = data.split(b"\n")
        self.rest = lines.pop()
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS, KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def run_cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", *args],
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the test; skips the test where mount fails."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path} (needs root/CAP_SYS_ADMIN): {done.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


_IN_ACCESS = 0x001
_IN_OPEN = 0x020
_IN_EVENT = struct.Struct("iIII")


class OpenProbe:
    """inotify on directories outside chunkd's paths: did any process open or read in them?

    Armed after the test has finished touching them, so any event is the daemon's doing.
    """

    def __init__(self, *directories: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._names: dict[int, Path] = {}
        for directory in directories:
            wd = libc.inotify_add_watch(self._fd, os.fsencode(directory), _IN_OPEN | _IN_ACCESS)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
            self._names[wd] = directory

    def events(self) -> list[str]:
        """``"<path> OPEN|ACCESS"`` for everything seen since the probe was armed."""
        found: list[str] = []
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return found
            pos = 0
            while pos < len(data):
                wd, mask, _cookie, length = _IN_EVENT.unpack_from(data, pos)
                name = data[pos + 16 : pos + 16 + length].rstrip(b"\0").decode(errors="replace")
                kind = "OPEN" if mask & _IN_OPEN else "ACCESS"
                found.append(f"{self._names.get(wd, '?')}/{name} {kind}")
                pos += 16 + length

    def close(self) -> None:
        os.close(self._fd)


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1
) -> float:
    """Poll ``predicate`` until true; the seconds it took. AssertionError after ``timeout_s``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
    return time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``daemon_factory(root=None, start=True, **config)``: a DaemonProcess, killed at teardown."""
    yield from _harness.spawn_daemons(tmp_path)
