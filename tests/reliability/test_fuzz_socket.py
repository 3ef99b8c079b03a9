"""Fuzzing the control socket of a real daemon: random bytes, random JSON, hostile requests.

Invariants, for every case:

* a complete request line gets exactly one answer: a JSON object with a boolean ``ok``, and on
  error a ``code`` from the client-error set (``bad_request``, ``unknown_command``,
  ``not_found``, ``forbidden``, ``busy``); ``internal`` means the daemon failed on input it should
  have refused, and is a finding;
* a ``restore``/``export`` that is accepted streams frames whose trailer matches;
* the daemon answers ``ping`` on a fresh connection right after, and at the end it is still the
  same process with the same stored rounds.

Framing abuse (over-long lines, pipelining, byte-at-a-time trickles, hang-ups mid-line,
hundreds of idle connections, descriptors of the wrong kind or too many) is exercised too.
``--torture`` multiplies the case counts by ten.
"""

from __future__ import annotations

import json
import os
import socket
import string
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkd.protocol import COMMAND_FIELDS

from .conftest import (
    CLIENT_ERROR_CODES,
    DaemonProcess,
    Reply,
    connect,
    model_bytes,
    ping,
    read_answer,
    request,
    round_shas,
    run_cli,
    wait_for,
    write_atomic,
)

pytestmark = [pytest.mark.slow, pytest.mark.torture]


class Harness:
    """A daemon with one client of two rounds, and what the cases found."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.outcomes: Counter[str] = Counter()
        self.findings: list[dict[str, Any]] = []

    def send(self, line: bytes, case: str) -> Reply:
        with connect(self.daemon.socket, 30) as sock:
            sock.sendall(line + b"\n")
            answer = read_answer(sock, bytearray())
        assert answer is not None, f"no answer to {line[:200]!r}"
        reply, _payload = answer
        self.judge(reply, line, case)
        return reply

    def judge(self, reply: Reply, line: bytes, case: str) -> None:
        obj = reply.obj
        assert isinstance(obj, dict) and isinstance(obj.get("ok"), bool), reply.raw
        if obj["ok"]:
            self.outcomes[f"{case}:ok"] += 1
            return
        code = reply.code
        self.outcomes[f"{case}:{code}"] += 1
        if code not in CLIENT_ERROR_CODES:
            shown = line[:300].decode("latin1")
            self.findings.append({"case": case, "request": shown, "answer": obj})

    def alive(self) -> None:
        assert self.daemon.proc is not None and self.daemon.proc.poll() is None, "daemon died"
        assert ping(self.daemon.socket, 5.0) < 2.0, "ping took over 2 s"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp("fuzz-socket")
    daemon = DaemonProcess(root, {"settle_delay": "0.1s"})
    daemon.watch_root.mkdir(parents=True)
    for r in (1, 2):
        path = daemon.watch_root / "client_1" / f"model_round_{r}.pth"
        write_atomic(path, model_bytes(r, 1 << 16))
    daemon.start()
    daemon.wait_event(lambda e: e.get("event") == "checkpoint.ingested", count=2)
    yield Harness(daemon)
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.proc.kill()
        daemon.proc.wait()


def scale(torture: bool, n: int) -> int:
    return n * 10 if torture else n


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
hostile_strings = st.sampled_from(
    [
        "",
        "1",
        "latest",
        "..",
        ".",
        "../1",
        "1/../1",
        "/etc/passwd",
        "/proc/self/environ",
        "\u0000",
        "1\u0000",
        "a" * 65,
        "ü",
        "fd",
        "frames",
        "safetensors",
        "pickle",
        "-1",
        "9" * 30,
        "${HOME}",
        "$(touch /tmp/chunkd-fuzz-marker)",
    ]
) | st.text(alphabet=string.printable, max_size=30)
field_values = (
    hostile_strings
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.sampled_from([0, 1, 2, 2**63 - 1, 2**63, -1, True, False, None, 1.5, [], {}])
    | json_values
)
field_names = st.sampled_from(
    sorted({name for fields in COMMAND_FIELDS.values() for name in fields} | {"cmd", "x"})
) | st.text(max_size=8)


#: Plausible values per field, so that most requests get past validation into the handlers.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "client": st.sampled_from(["1", "2", "nope", "1.0", "_"]),
    "round": st.sampled_from([1, 2, 3, 0, "latest", 2**63 - 1]),
    "transfer": st.just("frames"),
    "format": st.just("safetensors"),
    "dry_run": st.booleans(),
    "path": st.sampled_from(["/etc/passwd", "/proc/self/environ", "/", "/tmp", "/dev/zero"]),
}


@st.composite
def structured_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed requests of every command, with a hostile value or field mixed in."""
    commands = sorted(COMMAND_FIELDS)
    cmd = draw(hostile_strings) if draw(st.integers(0, 9)) == 0 else draw(st.sampled_from(commands))
    body: dict[str, Any] = {"cmd": cmd}
    for name in COMMAND_FIELDS.get(cmd, {}):
        if draw(st.integers(0, 3)):
            body[name] = draw(PLAUSIBLE.get(name, field_values))
    for name in draw(st.lists(field_names, max_size=2)):
        body[name] = draw(field_values | PLAUSIBLE.get(name, field_values))
    if body.get("transfer") == "fd":
        body["transfer"] = "frames"  # an fd transfer needs a descriptor: tested separately
    if body.get("cmd") == "forget":
        # a well-formed forget by root is obeyed (it is the command's job), which would change
        # the rounds this test proves untouched: only dry runs, and malformed ones, go through
        body["dry_run"] = True
    return body


def run_cases(harness: Harness, strategy: st.SearchStrategy[bytes], n: int, case: str) -> None:
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(line: bytes) -> None:
        harness.send(line, case)
        harness.alive()

    run()


def test_random_bytes_json_and_requests(harness, torture, figures):
    raw = st.binary(max_size=2048).map(lambda b: b.replace(b"\n", b" "))
    as_json = json_values.map(lambda v: json.dumps(v).encode())
    structured = structured_requests().map(lambda body: json.dumps(body).encode())
    dup_keys = st.sampled_from(sorted(COMMAND_FIELDS)).map(
        lambda c: f'{{"cmd": "{c}", "cmd": "ping"}}'.encode()
    )
    started = time.monotonic()
    before = round_shas(harness.daemon.db("1"))
    run_cases(harness, raw, scale(torture, 300), "bytes")
    run_cases(harness, as_json, scale(torture, 300), "json")
    run_cases(harness, structured, scale(torture, 600), "request")
    run_cases(harness, dup_keys, 20, "duplicate_keys")
    assert round_shas(harness.daemon.db("1")) == before
    assert not Path("/tmp/chunkd-fuzz-marker").exists()
    figures.update(
        cases=sum(harness.outcomes.values()),
        outcomes=dict(sorted(harness.outcomes.items())),
        findings=harness.findings[:20],
        duration_s=round(time.monotonic() - started, 1),
    )
    figures.save()
    assert not harness.findings, json.dumps(harness.findings[:5], indent=2)


def test_framing_abuse(harness, figures):
    daemon = harness.daemon
    results: dict[str, str] = {}

    # a line over 64 KiB: bad_request, then the connection is closed
    with connect(daemon.socket) as sock:
        sock.sendall(b'{"cmd": "ping", "pad": "' + b"x" * (70 << 10) + b'"}\n')
        reply, _ = read_answer(sock, bytearray()) or (None, None)
        assert reply is not None and reply.code == "bad_request", reply
        results["over_64KiB"] = reply.code
    # deep nesting and a 60,000-digit number inside the limit
    for name, line in {
        "nesting_30000": b"[" * 30000 + b"]" * 30000,
        "digits_60000": b'{"cmd": "restore", "client": "1", "round": ' + b"9" * 60000 + b"}",
        "invalid_utf8": b'{"cmd": "ping\xff"}',
        "nul_bytes": b'{"cmd": "pi\x00ng"}',
        "crlf": b'{"cmd": "ping"}\r',
        "bom": b'\xef\xbb\xbf{"cmd": "ping"}',
        "nan": b'{"cmd": "restore", "client": "1", "round": NaN}',
    }.items():
        reply = harness.send(line, name)
        results[name] = "ok" if reply.ok else str(reply.code)
    # fifty pipelined requests in one write: fifty answers, in order
    with connect(daemon.socket) as sock:
        sock.sendall(b"".join(json.dumps({"cmd": "ping"}).encode() + b"\n" for _ in range(50)))
        buf = bytearray()
        answers = [read_answer(sock, buf) for _ in range(50)]
        assert all(a is not None and a[0].ok for a in answers)
        results["pipelined_50"] = "ok"
    # a request trickled one byte at a time (inside the idle timeout)
    with connect(daemon.socket) as sock:
        for byte in b'{"cmd": "list"}\n':
            sock.send(bytes([byte]))
            time.sleep(0.01)
        reply, _ = read_answer(sock, bytearray()) or (None, None)
        assert reply is not None and reply.ok
        results["trickle"] = "ok"
    # hang-ups: before sending, mid-line, mid-stream of a restore
    connect(daemon.socket).close()
    with connect(daemon.socket) as sock:
        sock.sendall(b'{"cmd": "lis')
    with connect(daemon.socket) as sock:
        sock.sendall(b'{"cmd": "restore", "client": "1", "transfer": "frames"}\n')
        sock.recv(100)
    harness.alive()
    # 300 idle connections (more than max_connections): the daemon still answers a ping after
    idle = open_idle(daemon.socket, 300)
    results["idle_connections_opened"] = str(len(idle))
    for sock in idle:
        sock.close()
    wait_for(lambda: _pings(daemon.socket), 10, "ping after the idle connections closed")
    # descriptors: of the wrong kind, too many, or with a request that takes none
    results.update(_descriptor_cases(harness))
    harness.alive()
    figures.update(results=results)
    figures.save()


def open_idle(path: Path, count: int) -> list[socket.socket]:
    """``count`` connections that send nothing (a full accept backlog is waited out)."""
    idle: list[socket.socket] = []
    deadline = time.monotonic() + 30
    while len(idle) < count and time.monotonic() < deadline:
        try:
            idle.append(connect(path, 5))
        except BlockingIOError:  # the listen backlog is full until the daemon accepts
            time.sleep(0.01)
    return idle


def test_one_peer_cannot_lock_out_another(harness):
    """Regression (found by this campaign): connection slots were global, so one process holding
    max_connections (256) idle connections made the daemon answer everyone else 'busy'."""
    idle = open_idle(harness.daemon.socket, 300)
    try:
        done = run_cli("status", "--socket", str(harness.daemon.socket), timeout_s=30)
        assert done.returncode == 0, done.stderr.decode()
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: _pings(harness.daemon.socket), 10, "ping after the idle connections closed")


def _pings(path: Path) -> bool:
    try:
        ping(path, 2.0)
    except (AssertionError, OSError):
        return False
    return True


def _descriptor_cases(harness: Harness) -> dict[str, str]:
    daemon = harness.daemon
    results = {}
    restore = json.dumps({"cmd": "restore", "client": "1", "transfer": "fd"}).encode() + b"\n"
    read_only = os.open("/dev/null", os.O_RDONLY)
    directory = os.open(daemon.root, os.O_RDONLY | os.O_DIRECTORY)
    r, w = os.pipe()
    cases = {
        "fd_read_only": (restore, [read_only]),
        "fd_directory": (restore, [directory]),
        "fd_two": (restore, [w, w]),
        "fd_with_ping": (json.dumps({"cmd": "ping"}).encode() + b"\n", [w]),
        "fd_ten": (restore, [w] * 10),
    }
    try:
        for name, (line, fds) in cases.items():
            with connect(daemon.socket) as sock:
                socket.send_fds(sock, [line], fds)
                answer = read_answer(sock, bytearray())
            assert answer is not None, name
            harness.judge(answer[0], line, name)
            assert not answer[0].ok, (name, answer[0].raw)
            results[name] = str(answer[0].code)
    finally:
        for fd in (read_only, directory, r, w):
            os.close(fd)
    return results


def test_the_daemon_survived(harness, figures):
    """After all the cases: the same process, the same rounds, a working restore."""
    daemon = harness.daemon
    harness.alive()
    reply, payload = request(
        daemon.socket, {"cmd": "restore", "client": "1", "round": 2, "transfer": "frames"}
    )
    assert reply.ok and payload is not None
    assert daemon.stop() == 0
    figures.update(findings=len(harness.findings), exit_code=0)
    figures.save()
