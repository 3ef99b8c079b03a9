"""One damaged database must not break ``chunkd list`` for every client (issue 9, item 4)."""

from __future__ import annotations

import json

import pytest

from .conftest import model_bytes, request, run_cli, write_atomic

pytestmark = pytest.mark.slow


def test_list_answers_for_healthy_clients_and_reports_the_damaged_one(daemon_factory) -> None:
    daemon = daemon_factory()
    for client in ("a", "b"):
        directory = daemon.watch_root / f"client_{client}"
        directory.mkdir()
        write_atomic(directory / "round_1.pth", model_bytes(seed=ord(client), nbytes=32 << 10))
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=2)

    # Overwrite b's database header: not a SQLite file any more.
    with open(daemon.db("b"), "r+b") as f:
        f.write(b"this is not a database" * 8)

    reply, _ = request(daemon.socket, {"cmd": "list"})
    assert reply.ok, reply.raw
    by_client = {c["client"]: c for c in reply.obj["result"]["clients"]}
    assert by_client["a"]["round_count"] == 1 and "error" not in by_client["a"]
    assert by_client["b"]["error"]["message"].startswith("database ")
    assert by_client["b"]["round_count"] == 0

    status, _ = request(daemon.socket, {"cmd": "status"})
    assert status.obj["result"]["errors"] >= 1
    assert "b" in status.obj["result"]["damaged_databases"]

    done = run_cli("list", "--json", "--socket", str(daemon.socket))
    assert done.returncode == 0, done.stderr
    assert {c["client"] for c in json.loads(done.stdout)["clients"]} == {"a", "b"}
