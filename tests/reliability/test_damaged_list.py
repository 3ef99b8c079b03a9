"""A damaged database is listed as damaged, never as an empty client (issue 9 item 4, issue 17
finding 6): ``list`` answers for every healthy client, names the damaged one with the reason,
and exits 5 (``integrity``, as ``verify`` does), through the daemon and with ``--db``."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from .conftest import model_bytes, request, run_cli, write_atomic

pytestmark = pytest.mark.slow

INTEGRITY = 5


def _not_sqlite(db: Path) -> None:
    with open(db, "r+b") as f:
        f.write(b"this is not a database" * 8)


def _newer_format(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version=99")


def _malformed(db: Path) -> None:
    """Every page but the first (the schema's) overwritten: the tables' pages are garbage."""
    page_size = int.from_bytes(db.read_bytes()[16:18], "big")
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.seek(page_size)
        f.write(b"\xa5" * (size - page_size))


DAMAGE = {"b": _not_sqlite, "c": _newer_format, "d": _malformed}


def test_list_answers_for_healthy_clients_and_reports_the_damaged_one(daemon_factory) -> None:
    daemon = daemon_factory()
    for client in ("a", *DAMAGE):
        directory = daemon.watch_root / f"client_{client}"
        directory.mkdir()
        write_atomic(directory / "round_1.pth", model_bytes(seed=ord(client), nbytes=32 << 10))
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=1 + len(DAMAGE))
    for client, damage in DAMAGE.items():
        damage(daemon.db(client))

    reply, _ = request(daemon.socket, {"cmd": "list"})
    assert reply.ok, reply.raw
    by_client = {c["client"]: c for c in reply.obj["result"]["clients"]}
    assert by_client["a"]["round_count"] == 1 and "error" not in by_client["a"]
    assert "damaged" not in by_client["a"]
    for client in DAMAGE:
        assert by_client[client]["error"]["message"].startswith("database "), client
        assert by_client[client]["error"]["code"] == "integrity"
        assert by_client[client]["damaged"]["reason"], client
    assert "format 99" in by_client["c"]["damaged"]["reason"]

    status, _ = request(daemon.socket, {"cmd": "status"})
    assert status.obj["result"]["errors"] >= len(DAMAGE)
    assert set(DAMAGE) <= set(status.obj["result"]["damaged_databases"])
    shown = run_cli("status", "--socket", str(daemon.socket)).stdout.decode()
    assert "damaged databases:" in shown

    as_json = run_cli("list", "--json", "--socket", str(daemon.socket))
    assert as_json.returncode == INTEGRITY, as_json.stderr
    assert {c["client"] for c in json.loads(as_json.stdout)["clients"]} == {"a", *DAMAGE}

    human = run_cli("list", "--socket", str(daemon.socket))
    assert human.returncode == INTEGRITY
    assert human.stderr.decode().count("\n") == 1 and b"damaged" in human.stderr
    rows = {line.split()[0]: line.split() for line in human.stdout.decode().splitlines()[1:5]}
    assert rows["a"][1] == "1"
    text = " ".join(human.stdout.decode().split())
    for client in DAMAGE:
        assert rows[client][1] == "DAMAGED"
        assert f"client {client}: database DAMAGED:" in text
    assert "format 99" in text

    one = run_cli("list", "--client", "d", "--socket", str(daemon.socket))
    assert one.returncode == INTEGRITY and b"DAMAGED" in one.stdout


def test_healthy_status_prints_no_damaged_header(daemon_factory) -> None:
    daemon = daemon_factory()
    shown = run_cli("status", "--socket", str(daemon.socket))
    assert shown.returncode == 0, shown.stderr
    assert b"damaged databases" not in shown.stdout


@pytest.mark.parametrize("damage", sorted(DAMAGE.values(), key=lambda f: f.__name__))
def test_list_db_reports_a_damaged_database(daemon_factory, tmp_path: Path, damage) -> None:
    daemon = daemon_factory()
    directory = daemon.watch_root / "client_e"
    directory.mkdir()
    write_atomic(directory / "round_1.pth", model_bytes(seed=5, nbytes=32 << 10))
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested")
    db = tmp_path / "copy" / "client_e_chunks.db"
    db.parent.mkdir()
    shutil.copy(daemon.db("e"), db)
    damage(db)

    done = run_cli("list", "--db", str(db), "--json", "--config", str(daemon.config))
    assert done.returncode == INTEGRITY, done.stderr
    (entry,) = json.loads(done.stdout)["clients"]
    assert entry["client"] == "e" and entry["damaged"]["reason"]
    human = run_cli("list", "--db", str(db), "--config", str(daemon.config))
    assert human.returncode == INTEGRITY
    assert b"client e: database DAMAGED:" in human.stdout
