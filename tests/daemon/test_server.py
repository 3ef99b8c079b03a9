"""The socket server against real sockets, real databases and real checkpoint files.

The daemon half is a small but real :class:`DaemonState` written here: clients backed by
ChunkStore databases filled with ``ingest_file`` from ``torch.save`` files, ingest and prune run
by the engine on one writer thread (what a lane does). Every command is exercised, restore and
export both through a passed descriptor and as frames, and then the abuse list: each hostile
request gets an error answer or a clean close, and a normal ``ping`` still answers within 1 s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import io
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chunkd import log
from chunkd.cli.client import DaemonClient
from chunkd.config import Settings, settings_from_mapping
from chunkd.daemon.leases import LeaseTable
from chunkd.daemon.server import Server, ServerLimits
from chunkd.daemon.socketfile import SocketFile
from chunkd.daemon.state import ClientInfo, RemovedClient
from chunkd.errors import (
    BusyError,
    ConfigError,
    ForbiddenError,
    IntegrityError,
    NotFoundError,
    RequestError,
)
from chunkd.ingest import IngestOptions, IngestResult, ingest_file
from chunkd.protocol import FRAME_END, FRAME_HEADER, MAX_LINE_BYTES, TRAILER_BYTES
from chunkd.prune import PruneResult, prune_store
from chunkd.store import ChunkStore

#: Short limits so that timeouts happen within a test's patience.
LIMITS = ServerLimits(
    max_connections=256, idle_timeout_s=3.0, write_timeout_s=2.0, linger_s=0.3, stop_timeout_s=2
)
OPTIONS = IngestOptions(chunk_num=4, max_chunk_bytes=64 << 10)


# -- a real DaemonState --------------------------------------------------------------------------


class LocalState:
    """DaemonState over real databases; one writer thread plays every client's lane."""

    def __init__(self, settings: Settings, clients: Mapping[str, ClientInfo]) -> None:
        self.settings = settings
        self.leases = LeaseTable()
        self._clients = dict(clients)
        self._lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-lane")
        self._started = time.monotonic()

    def clients(self) -> Mapping[str, ClientInfo]:
        return dict(self._clients)

    def removed_clients(self) -> Mapping[str, RemovedClient]:
        return {}

    def status(self) -> dict[str, object]:
        return {
            "uptime_s": round(time.monotonic() - self._started, 3),
            "clients": len(self._clients),
            "queue_depth": 0,
            "last_ingest": None,
            "errors": 0,
        }

    def submit_ingest(
        self, client_id: str, path: Path, round_num: int | None
    ) -> Future[IngestResult]:
        db = self._clients[client_id].db_path
        return self._lane.submit(self._ingest, db, path, round_num)

    def submit_prune(self, client_id: str, dry_run: bool) -> Future[PruneResult]:
        db = self._clients[client_id].db_path
        return self._lane.submit(self._prune, client_id, db, dry_run)

    @staticmethod
    def _ingest(db: Path, path: Path, round_num: int | None) -> IngestResult:
        with ChunkStore.open_writer(db) as store:
            return ingest_file(path, store, OPTIONS, round_num=round_num)

    def _prune(self, client_id: str, db: Path, dry_run: bool) -> PruneResult:
        with ChunkStore.open_writer(db) as store:
            return prune_store(
                store,
                self.settings.chunk_keep_rounds,
                dry_run=dry_run,
                lease_gate=functools.partial(self.leases.deleting, client_id),
            )

    def close(self) -> None:
        self._lane.shutdown(wait=True)


def save_model(path: Path, seed: int, elements: int = 3000) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    state = {
        "fc.weight": torch.randn(elements, generator=generator),
        "fc.bias": torch.arange(16, dtype=torch.int64),
        "bn.num_batches_tracked": torch.tensor(seed),
    }
    torch.save(state, path)
    return path.read_bytes()


class World:
    """A watch root with two clients, a socket path short enough for AF_UNIX, and a server."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "run" / "chunkd.sock"
        self.files: dict[tuple[str, int], bytes] = {}
        self.clients: dict[str, ClientInfo] = {}
        for client_id in ("1", "2"):
            directory = root / "fl" / f"client_{client_id}"
            directory.mkdir(parents=True)
            self.clients[client_id] = ClientInfo(
                client_id, directory, directory / f"client_{client_id}_chunks.db"
            )
        self.settings = settings_from_mapping(
            {"watch_root": str(root / "fl"), "socket": str(self.socket), "chunk_keep_rounds": 2},
            source="test",
            base_dir=root,
        )
        self.servers: list[tuple[Server, LocalState]] = []

    def add_round(self, client_id: str, round_num: int, elements: int = 3000) -> Path:
        path = self.clients[client_id].directory / f"model_round_{round_num}.pth"
        self.files[(client_id, round_num)] = save_model(
            path, seed=round_num * 10 + int(client_id), elements=elements
        )
        with ChunkStore.open_writer(self.clients[client_id].db_path) as store:
            ingest_file(path, store, OPTIONS)
        return path

    def serve(self, limits: ServerLimits = LIMITS, **settings: object) -> Server:
        state = LocalState(dataclasses.replace(self.settings, **settings), self.clients)
        server = Server(state, limits=limits)
        server.start()
        self.servers.append((server, state))
        return server

    def state(self) -> LocalState:
        return self.servers[-1][1]

    def client(self) -> DaemonClient:
        return DaemonClient.connect(self.socket)

    def close(self) -> None:
        for server, state in self.servers:
            server.stop()
            state.close()


@pytest.fixture
def world() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="chunkd-srv-", dir="/tmp"))  # AF_UNIX: 107 bytes max
    w = World(root)
    for round_num in (1, 2, 3):
        w.add_round("1", round_num)
    w.add_round("2", 7)
    try:
        yield w
    finally:
        w.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, object]]]]:
    """The JSON log lines written while the test runs (the real renderer, from every thread)."""
    buffer = io.StringIO()
    log.configure_logging("json", "debug", stream=buffer)

    def lines() -> list[dict[str, object]]:
        return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]

    yield lines
    log.configure_logging("json", "info", stream=io.StringIO())


# -- raw socket helpers --------------------------------------------------------------------------


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    return sock


def read_line(sock: socket.socket) -> bytes:
    """One answer line; b"" if the server closed the connection first."""
    data = bytearray()
    while not data.endswith(b"\n"):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return b""
        if not chunk:
            return b""
        data += chunk
    return bytes(data)


def exchange(path: Path, payload: bytes) -> dict[str, object] | None:
    """Send raw bytes; the decoded answer, or None for a clean close."""
    with connect(path) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        line = read_line(sock)
    return json.loads(line) if line else None


def assert_ping_fast(path: Path) -> None:
    started = time.monotonic()
    assert exchange(path, b'{"cmd": "ping"}\n') is not None
    assert time.monotonic() - started < 1.0


def error_code(answer: dict[str, object] | None) -> str | None:
    if answer is None:
        return None
    assert answer["ok"] is False, answer
    error = answer["error"]
    assert isinstance(error, dict) and error["message"]
    return str(error["code"])


# -- every command -------------------------------------------------------------------------------


def test_ping_status_and_list(world: World, log_lines: Callable[[], list[dict[str, object]]]):
    world.serve()
    with world.client() as client:
        pong = client.call("ping")
        assert pong["pong"] is True and pong["pid"] == os.getpid()
        assert client.call("status")["clients"] == 2
        listed = client.call("list")["clients"]
        assert [c["client"] for c in listed] == ["1", "2"]
        one = client.call("list", client="1")["clients"][0]
    assert [r["round"] for r in one["rounds"]] == [1, 2, 3]
    assert one["rounds"][0]["sha256"] == hashlib.sha256(world.files[("1", 1)]).hexdigest()
    assert one["rounds"][0]["file_size"] == len(world.files[("1", 1)])
    assert one["file_bytes"] == sum(len(world.files[("1", r)]) for r in (1, 2, 3))
    assert one["dedup_ratio"] >= 1.0 and one["compression_ratio"] >= 1.0
    served = [e for e in log_lines() if e["event"] == "request.served"]
    assert {e["cmd"] for e in served} == {"ping", "status", "list"}
    for event in served:
        assert event["peer_uid"] == os.getuid() and event["peer_pid"] == os.getpid()
        assert isinstance(event["duration_ms"], float)


def test_restore_through_a_passed_fd_is_byte_identical(
    world: World, log_lines: Callable[[], list[dict[str, object]]]
):
    world.serve()
    for round_num, answer_round in ((2, 2), (None, 3)):
        with tempfile.TemporaryFile(dir=world.root) as out, world.client() as client:
            result = client.restore_to_fd("restore", out.fileno(), client="1", round=round_num)
            out.seek(0)
            data = out.read()
        assert result["round"] == answer_round
        assert data == world.files[("1", answer_round)]
        assert result["sha256"] == hashlib.sha256(data).hexdigest()
        assert result["bytes"] == len(data)
    served = [e for e in log_lines() if e["event"] == "restore.served"]
    assert len(served) == 2
    assert {"client", "round", "bytes", "sha256", "duration_ms", "mb_per_s", "mode"} <= set(
        served[0]
    )
    assert served[0]["mode"] == "fd"
    assert world.state().leases.leased("1") == frozenset()


def test_restore_as_frames_is_byte_identical(world: World):
    world.serve()
    received = bytearray()
    with world.client() as client:
        result = client.restore_frames("restore", lambda b: received.extend(b), client="1", round=1)
        assert client.call("ping")["pong"]  # the connection is usable after a stream
    assert bytes(received) == world.files[("1", 1)]
    assert result.sha256 == hashlib.sha256(received).hexdigest() == result.header["sha256"]


def test_a_half_closed_client_still_gets_its_answer(world: World):
    """Like socat at the end of its input: shutdown(SHUT_WR), then read the answer."""
    world.serve()
    with tempfile.TemporaryFile(dir=world.root) as out, connect(world.socket) as sock:
        line = b'{"cmd": "restore", "client": "1", "round": 1, "transfer": "fd"}\n'
        socket.send_fds(sock, [line], [out.fileno()])
        sock.shutdown(socket.SHUT_WR)
        answer = json.loads(read_line(sock))
        out.seek(0)
        assert answer["ok"] and out.read() == world.files[("1", 1)]


def test_restore_into_a_pipe(world: World):
    world.serve()
    read_end, write_end = os.pipe()
    chunks: list[bytes] = []
    reader = threading.Thread(
        target=lambda: chunks.extend(iter(lambda: os.read(read_end, 1 << 16), b""))
    )
    reader.start()
    try:
        with world.client() as client:
            client.restore_to_fd("restore", write_end, client="1", round=3)
    finally:
        os.close(write_end)
        reader.join(5)
        os.close(read_end)
    assert b"".join(chunks) == world.files[("1", 3)]


def test_export_safetensors_by_fd_and_frames(world: World):
    world.serve()
    original = torch.load(world.clients["1"].directory / "model_round_2.pth", weights_only=True)
    target = world.root / "out.safetensors"
    with open(target, "wb") as out, world.client() as client:
        result = client.restore_to_fd(
            "export", out.fileno(), client="1", round=2, format="safetensors"
        )
    assert result["tensors"] == 3
    loaded = load_file(target)
    assert loaded.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(loaded[name], tensor)
    received = bytearray()
    with world.client() as client:
        client.restore_frames(
            "export", lambda b: received.extend(b), client="1", round=2, format="safetensors"
        )
    assert bytes(received) == target.read_bytes()


def test_verify_finds_a_corrupted_chunk_with_round_and_chunk(world: World):
    world.serve()
    with world.client() as client:
        assert client.call("verify")["ok"] is True
    db = world.clients["2"].db_path
    with sqlite3.connect(db) as conn:
        (chunk_hash,) = conn.execute(
            "SELECT chunk_hash FROM chunk_metadata WHERE round_num = 7 AND chunk_id = 1"
        ).fetchone()
        conn.execute(
            "UPDATE chunk_data SET data = zeroblob(length(data)) WHERE chunk_hash = ?",
            (chunk_hash,),
        )
    with world.client() as client:
        report = client.call("verify", client="2")
        with open(os.devnull, "wb") as devnull, pytest.raises(IntegrityError, match="round 7"):
            client.restore_to_fd("restore", devnull.fileno(), client="2", round=7)
        received = bytearray()
        with pytest.raises(IntegrityError, match="chunk 1"):  # an error frame mid-stream
            client.restore_frames("restore", received.extend, client="2", round=7)
        assert 0 < len(received) < len(world.files[("2", 7)])
        assert client.call("ping")["pong"]  # the connection survives an aborted stream
    assert report["ok"] is False
    problem = report["clients"][0]["problems"][0]
    assert (problem["round"], problem["chunk_id"]) == (7, 1)


def test_ingest_and_prune_go_through_the_lane(world: World):
    world.serve()
    new_file = world.clients["1"].directory / "model_round_9.pth"
    content = save_model(new_file, seed=99)
    with world.client() as client:
        result = client.call("ingest", client="1", path=str(new_file))
        assert (result["outcome"], result["round"]) == ("ingested", 9)
        assert result["sha256"] == hashlib.sha256(content).hexdigest()
        dry = client.call("prune", client="1", dry_run=True)["clients"][0]
        assert dry["rounds_removed"] == [1, 2] and dry["dry_run"] is True
        done = client.call("prune")["clients"]
        assert done[0]["rounds_removed"] == [1, 2] and done[1]["rounds_removed"] == []
        rounds = [r["round"] for r in client.call("list", client="1")["clients"][0]["rounds"]]
    assert rounds == [3, 9]


def test_ingest_reads_only_inside_the_clients_directory(world: World):
    world.serve()
    outside = world.root / "elsewhere.pth"
    save_model(outside, seed=5)
    link = world.clients["1"].directory / "link_round_5.pth"
    link.symlink_to(outside)
    with world.client() as client:
        for path in (outside, link, world.clients["2"].directory / "model_round_7.pth"):
            with pytest.raises(ForbiddenError):
                client.call("ingest", client="1", path=str(path))
        with pytest.raises(NotFoundError):
            client.call("ingest", client="1", path=str(world.clients["1"].directory / "no.pth"))
        with pytest.raises(NotFoundError):
            client.call("restore", client="9", round=1)


def test_a_client_whose_database_is_still_empty_has_no_rounds(world: World):
    """SQLite creates the file empty at the first writer's connect; until the schema commits,
    readers must see "nothing stored yet", not an internal error."""
    world.clients["3"] = ClientInfo("3", world.root, world.root / "client_3_chunks.db")
    world.clients["3"].db_path.touch()
    world.serve()
    with world.client() as client:
        listed = client.call("list")["clients"]
        assert [c["round_count"] for c in listed] == [3, 1, 0]
        with pytest.raises(NotFoundError, match="no stored rounds"):
            client.call("restore", client="3")


def test_the_daemons_own_uid_is_an_admin(world: World):
    """Root and the daemon's own uid may do anything whatever allowed_uids says; other uids
    are tried over the real socket in tests/reliability/test_access.py."""
    world.serve(allowed_uids=(os.getuid() + 1,))
    with world.client() as client:
        assert client.call("prune", dry_run=True)["dry_run"] is True
        with pytest.raises(ForbiddenError, match="outside the directory"):
            client.call("ingest", client="1", path=str(world.root / "x.pth"))
        assert client.call("list")["clients"]


# -- abuse ---------------------------------------------------------------------------------------

BAD_REQUESTS = {
    "invalid json": b"{not json\n",
    "not an object": b"[1, 2, 3]\n",
    "missing field": b'{"cmd": "restore"}\n',
    "extra field": b'{"cmd": "ping", "please": true}\n',
    "binary garbage": b"\xff\xfe\x00\x9c\x80garbage\x01\x02\n",
    "traversal id": b'{"cmd": "restore", "client": "../../etc", "round": 1}\n',
    "traversal id 2": b'{"cmd": "list", "client": "1/../2"}\n',
    "negative round": b'{"cmd": "restore", "client": "1", "round": -1}\n',
    "huge round": b'{"cmd": "restore", "client": "1", "round": 9223372036854775808}\n',
    "float round": b'{"cmd": "restore", "client": "1", "round": 1.5}\n',
    "string round": b'{"cmd": "restore", "client": "1", "round": "2"}\n',
    "bool round": b'{"cmd": "restore", "client": "1", "round": true}\n',
    "relative ingest path": b'{"cmd": "ingest", "client": "1", "path": "x.pth"}\n',
    "fd wanted, none sent": b'{"cmd": "restore", "client": "1", "transfer": "fd"}\n',
    "empty line": b"\n",
}


@pytest.mark.parametrize("payload", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_malformed_requests_get_bad_request(world: World, payload: bytes):
    world.serve()
    assert error_code(exchange(world.socket, payload)) == "bad_request"
    assert_ping_fast(world.socket)


def test_unknown_command(world: World):
    world.serve()
    assert error_code(exchange(world.socket, b'{"cmd": "reboot"}\n')) == "unknown_command"


def test_a_line_over_64_kib_is_refused_and_the_connection_closed(world: World):
    world.serve()
    with connect(world.socket) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"x" * (1 << 20))  # 1 MiB, no newline
        answer = read_line(sock)
        assert error_code(json.loads(answer)) == "bad_request"
        assert sock.recv(10) == b""
    assert_ping_fast(world.socket)


def test_a_line_of_exactly_64_kib_is_read(world: World):
    world.serve()
    line = b'{"cmd": "ping"}'.ljust(MAX_LINE_BYTES) + b"\n"
    assert exchange(world.socket, line) == exchange(world.socket, b'{"cmd":"ping"}\n')


def test_half_a_request_then_disconnect(world: World):
    world.serve()
    for _ in range(20):
        with connect(world.socket) as sock:
            sock.sendall(b'{"cmd": "resto')
    assert_ping_fast(world.socket)


def test_pipelined_requests_are_answered_in_order(world: World):
    world.serve()
    with connect(world.socket) as sock:
        sock.sendall(b'{"cmd":"ping"}\n{"cmd":"nope"}\n{"cmd":"status"}\n')
        received = bytearray()
        while received.count(b"\n") < 3:  # answers may arrive together in one recv
            chunk = sock.recv(65536)
            assert chunk, "the daemon closed the connection early"
            received += chunk
        answers = [json.loads(line) for line in received.splitlines()]
    assert [a["ok"] for a in answers] == [True, False, True]
    assert answers[2]["result"]["clients"] == 2


def test_hundred_idle_connections_do_not_block_a_ping(world: World):
    world.serve()
    idle = [connect(world.socket) for _ in range(100)]
    trickling = connect(world.socket)
    trickling.sendall(b'{"cmd":')
    try:
        assert_ping_fast(world.socket)
    finally:
        for sock in [*idle, trickling]:
            sock.close()
    assert_ping_fast(world.socket)


def test_connections_past_the_limit_get_busy(world: World):
    world.serve(ServerLimits(max_connections=5, idle_timeout_s=3, linger_s=0.2))
    held = [connect(world.socket) for _ in range(5)]
    try:
        with connect(world.socket) as extra:
            assert error_code(json.loads(read_line(extra) or b"null")) == "busy"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert_ping_fast(world.socket)


def test_idle_and_slow_clients_time_out(world: World):
    world.serve(ServerLimits(idle_timeout_s=0.3, linger_s=0.2))
    with connect(world.socket) as silent, connect(world.socket) as slow:
        slow.sendall(b'{"cmd": "pi')
        time.sleep(0.8)
        assert silent.recv(10) == b""  # closed without a word
        assert error_code(json.loads(read_line(slow))) == "bad_request"
    assert_ping_fast(world.socket)


def test_a_client_that_disconnects_mid_restore_costs_nothing(
    world: World, log_lines: Callable[[], list[dict[str, object]]]
):
    world.add_round("1", 20, elements=2_000_000)  # 8 MB: far more than the socket buffers
    world.serve()
    with connect(world.socket) as sock:
        sock.sendall(b'{"cmd": "restore", "client": "1", "round": 20}\n')
        with sock.makefile("rb") as reader:  # reads the header line and a little of the frames
            header = json.loads(reader.readline())
        assert header["ok"] and header["result"]["bytes"] > 7_000_000
    deadline = time.monotonic() + 5
    while world.state().leases.any_held("1") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert world.state().leases.leased("1") == frozenset()
    assert_ping_fast(world.socket)
    failed = [e for e in log_lines() if e["event"] == "restore.failed"]
    assert failed and failed[0]["error_code"] == "disconnected"
    assert not [e for e in log_lines() if e["event"] == "request.failed"]


def test_a_closed_output_pipe_ends_the_restore(world: World):
    world.add_round("1", 21, elements=500_000)
    world.serve()
    read_end, write_end = os.pipe()
    os.close(read_end)
    with world.client() as client, pytest.raises(Exception, match="without answering"):
        client.restore_to_fd("restore", write_end, client="1", round=21)
    os.close(write_end)
    assert world.state().leases.leased("1") == frozenset()
    assert_ping_fast(world.socket)


def test_clients_that_stop_reading_time_out(
    world: World, log_lines: Callable[[], list[dict[str, object]]]
):
    world.add_round("1", 23, elements=2_000_000)  # 8 MB: more than any pipe or socket buffer
    world.serve(ServerLimits(write_timeout_s=0.5))
    read_end, write_end = os.pipe()  # the reader exists but never reads
    started = time.monotonic()
    with world.client() as client, pytest.raises(Exception, match="without answering"):
        client.restore_to_fd("restore", write_end, client="1", round=23)
    os.close(write_end)
    os.close(read_end)
    with connect(world.socket) as sock:  # asks for frames, then reads nothing
        sock.sendall(b'{"cmd": "restore", "client": "1", "round": 23}\n')
        time.sleep(1.0)
        assert_ping_fast(world.socket)
    assert time.monotonic() - started < 5
    failed = [e["error"] for e in log_lines() if e["event"] == "restore.failed"]
    assert len(failed) == 2 and all("not read" in str(error) for error in failed)
    assert world.state().leases.leased("1") == frozenset()


def test_frames_layout_on_the_wire(world: World):
    world.serve()
    with connect(world.socket) as sock:
        sock.sendall(b'{"cmd": "restore", "client": "2", "round": 7, "transfer": "frames"}\n')
        reader = sock.makefile("rb")
        header = json.loads(reader.readline())["result"]
        payload = bytearray()
        while (length := FRAME_HEADER.unpack(reader.read(FRAME_HEADER.size))[0]) != FRAME_END:
            payload += reader.read(length)
        trailer = reader.read(TRAILER_BYTES)
    assert header["transfer"] == "frames" and header["bytes"] == len(payload)
    assert trailer == hashlib.sha256(payload).digest()
    assert bytes(payload) == world.files[("2", 7)]


def test_an_fd_sent_with_a_request_that_takes_none(world: World):
    world.serve()
    with connect(world.socket) as sock, open(os.devnull, "wb") as devnull:
        socket.send_fds(sock, [b'{"cmd": "ping"}\n'], [devnull.fileno()])
        assert error_code(json.loads(read_line(sock))) == "bad_request"


def test_a_read_only_fd_is_refused(world: World):
    world.serve()
    with (
        open(os.devnull, "rb") as devnull,
        world.client() as client,
        pytest.raises(RequestError, match="not writable"),
    ):
        client.restore_to_fd("restore", devnull.fileno(), client="1", round=1)


# -- the socket file -----------------------------------------------------------------------------


def test_socket_mode_and_cleanup(world: World):
    server = world.serve()
    assert stat.S_IMODE(world.socket.stat().st_mode) == 0o660
    assert stat.S_ISSOCK(world.socket.stat().st_mode)
    assert not list(world.socket.parent.glob("*.tmp"))
    server.stop()
    assert not world.socket.exists()


def test_a_second_server_on_a_live_socket_refuses(world: World):
    world.serve()
    with pytest.raises(BusyError, match="another chunkd is serving"):
        SocketFile.bind(world.socket)
    assert_ping_fast(world.socket)  # the live one is untouched


def test_a_stale_socket_is_replaced_and_a_non_socket_refused(world: World):
    world.socket.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(world.socket))
    stale.close()  # the file stays, nobody listens: a crashed daemon's leftover
    world.serve()
    assert_ping_fast(world.socket)
    world.close()
    world.servers.clear()
    world.socket.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        SocketFile.bind(world.socket)
    assert world.socket.read_text() == "not a socket"


def test_stop_lets_a_request_in_flight_finish(world: World):
    world.add_round("1", 22, elements=1_000_000)
    server = world.serve()
    result: dict[str, object] = {}
    with tempfile.TemporaryFile(dir=world.root) as out:

        def restore() -> None:
            with world.client() as client:
                result.update(client.restore_to_fd("restore", out.fileno(), client="1", round=22))

        thread = threading.Thread(target=restore)
        thread.start()
        deadline = time.monotonic() + 5
        while not (result or world.state().leases.any_held("1")) and time.monotonic() < deadline:
            time.sleep(0.001)  # until the restore is in flight (or already done)
        server.stop()
        thread.join(10)
        out.seek(0)
        assert result["bytes"] == len(world.files[("1", 22)])
        assert out.read() == world.files[("1", 22)]
    with pytest.raises(OSError) as excinfo:
        connect(world.socket)
    assert excinfo.value.errno in (errno.ENOENT, errno.ECONNREFUSED)


# -- the CLI against this server -----------------------------------------------------------------


def run_cli(world: World, *args: str | Path, **kwargs: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", *map(str, args), "--socket", str(world.socket)],
        capture_output=True,
        env=env,
        cwd=world.root,
        timeout=60,
        check=False,
        **kwargs,
    )


def test_the_cli_restores_through_the_server(world: World):
    world.serve()
    for transfer in ("fd", "frames"):
        out = world.root / f"restored-{transfer}.pth"
        result = run_cli(
            world, "restore", "--client", "1", "--round", "2", "-o", out, "--transfer", transfer
        )
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == world.files[("1", 2)]
        piped = run_cli(world, "restore", "--client", "1", "-o", "-", "--transfer", transfer)
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout == world.files[("1", 3)]
    assert not list(world.root.glob(".*.partial"))
    missing = run_cli(world, "restore", "--client", "1", "--round", "99", "-o", "x.pth")
    assert missing.returncode == 3 and b"round 99" in missing.stderr
    assert not (world.root / "x.pth").exists()
    assert not list(world.root.glob(".*.partial"))


def test_the_cli_reads_lists_and_verifies_through_the_server(world: World):
    world.serve()
    status = run_cli(world, "status")
    assert status.returncode == 0 and b"uptime" in status.stdout
    listed = json.loads(run_cli(world, "list", "--json").stdout)
    assert [c["client"] for c in listed["clients"]] == ["1", "2"]
    assert run_cli(world, "verify").returncode == 0
    with sqlite3.connect(world.clients["1"].db_path) as conn:
        conn.execute(
            "UPDATE chunk_data SET data = zeroblob(length(data)) WHERE chunk_hash IN"
            " (SELECT chunk_hash FROM chunk_metadata WHERE round_num = 3 AND chunk_id = 0)"
        )
    broken = run_cli(world, "verify")
    assert broken.returncode == 5
    assert b"round 3 chunk 0" in broken.stdout
    new_file = world.clients["2"].directory / "model_round_8.pth"
    save_model(new_file, seed=8)
    ingested = run_cli(world, "ingest", new_file, "--client", "2")
    assert ingested.returncode == 0, ingested.stderr
    assert b"round 8" in ingested.stdout
