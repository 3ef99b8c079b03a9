"""What an operator must be told when history or a version is lost (issue 17, findings 6, 7, 11).

Each test runs a real daemon on real files: a client directory deleted with its database in it
(``client.removed``, then ``status`` and ``list``), a checkpoint rewritten faster than the settle
delay (``checkpoint.superseded`` for every version never stored), and the disk that earlier
generations of rewritten rounds cost (``list``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import pytest

from tests.daemon.checkpoints import restored_bytes, save_model

pytestmark = pytest.mark.slow


def _json(done) -> dict:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_removed_client_directory_is_logged_with_its_rounds_and_shown(make_daemon) -> None:
    daemon = make_daemon()
    for client in ("a", "b"):
        for round_num in (1, 2, 3):
            save_model(daemon.watch_root / f"client_{client}" / f"round_{round_num}.pth", round_num)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=6)

    shutil.rmtree(daemon.watch_root / "client_a")

    (removed,) = daemon.wait_event(lambda e: e["event"] == "client.removed")
    assert removed["level"] == "warning"
    assert removed["client"] == "a"
    assert removed["dir"] == str(daemon.watch_root / "client_a")
    assert removed["rounds"] == [1, 2, 3] and removed["round_count"] == 3
    assert removed["db_deleted"] is True

    status = _json(daemon.cli("status", "--json"))
    gone = status["removed_clients"]["a"]
    assert gone["round_count"] == 3 and gone["db_deleted"] is True
    assert "b" not in status["removed_clients"]
    text = daemon.cli("status").stdout.decode()
    assert "removed clients:" in text and "3 round(s) (1, 2, 3) lost" in " ".join(text.split())
    assert "damaged databases" not in text  # no header over nothing

    listed = {c["client"]: c for c in _json(daemon.cli("list", "--json"))["clients"]}
    assert listed["a"]["removed"]["rounds"] == [1, 2, 3]
    assert "removed" not in listed["b"] and listed["b"]["round_count"] == 3
    human = daemon.cli("list")
    assert human.returncode == 0, human.stderr
    row = next(line for line in human.stdout.decode().splitlines() if line.startswith("a "))
    assert "REMOVED" in row.split()
    assert "its database went with it: 3 round(s)" in " ".join(human.stdout.decode().split())

    # The directory comes back: a client again (history gone), the removal still in status.
    save_model(daemon.watch_root / "client_a" / "round_9.pth", 9)
    daemon.wait_event(
        lambda e: e["event"] == "checkpoint.ingested" and e.get("client") == "a", count=4
    )
    listed = {c["client"]: c for c in _json(daemon.cli("list", "--json"))["clients"]}
    assert "removed" not in listed["a"] and listed["a"]["round_count"] == 1
    assert _json(daemon.cli("status", "--json"))["removed_clients"]["a"]["returned_at"]


def test_versions_overwritten_before_settling_are_each_logged(make_daemon) -> None:
    """NVFlare rewrites FL_global_model.pt in place; at most the last of a burst can be stored,
    and every earlier complete version is named in a ``checkpoint.superseded`` line."""
    daemon = make_daemon(settle_delay="1s")
    path = daemon.watch_root / "client_server" / "FL_global_model.pt"
    path.parent.mkdir()  # the server's directory exists before training starts
    daemon.wait_event(lambda e: e["event"] == "client.added")
    versions = []
    for seed in range(4):
        data = save_model(path, seed, elements=4096 + 64 * seed)
        st = os.stat(path)
        versions.append((st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest()))
        time.sleep(0.2)

    (ingested,) = daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested")
    time.sleep(1.5)  # nothing else is taken later
    assert len(daemon.ingested()) == 1
    assert ingested["sha256"] == versions[-1][2]
    db = daemon.watch_root / "client_server" / "client_server_chunks.db"
    assert hashlib.sha256(restored_bytes(db, ingested["round"])).hexdigest() == versions[-1][2]

    superseded = [e for e in daemon.events() if e["event"] == "checkpoint.superseded"]
    assert [(e["lost_bytes"], e["lost_mtime_ns"]) for e in superseded] == [
        (size, mtime) for size, mtime, _ in versions[:-1]
    ]
    for event in superseded:
        assert event["level"] == "warning"
        assert event["client"] == "server" and event["path"] == str(path)
    status = _json(daemon.cli("status", "--json"))
    assert status["superseded"] == 3 and status["clients"]["server"]["superseded"] == 3


def test_a_settled_rewrite_is_not_superseded(make_daemon) -> None:
    """Versions written further apart than the settle delay are each stored; none is 'lost'."""
    daemon = make_daemon(settle_delay="0.3s")
    path = daemon.watch_root / "client_server" / "FL_global_model.pt"
    for seed in range(3):
        save_model(path, seed)
        daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=seed + 1)
    assert not [e for e in daemon.events() if e["event"] == "checkpoint.superseded"]


def test_list_shows_what_earlier_generations_cost(make_daemon) -> None:
    daemon = make_daemon()
    directory = daemon.watch_root / "client_a"
    first = save_model(directory / "round_1.pth", seed=1, elements=20_000)
    save_model(directory / "round_2.pth", seed=2, elements=20_000)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=2)
    save_model(directory / "round_1.pth", seed=11, elements=20_000)  # a rerun rewrites round 1
    daemon.wait_event(lambda e: e["event"] == "round.replaced")

    (entry,) = _json(daemon.cli("list", "--json"))["clients"]
    assert entry["round_count"] == 2
    assert entry["generation_count"] == 1
    assert entry["generation_file_bytes"] == len(first)
    # the first run's round 1 shares no tensor bytes with anything kept: its chunks are its own
    assert 40_000 < entry["generation_stored_bytes"] < entry["stored_bytes"]

    offline = _json(daemon.cli("list", "--db", str(daemon.db("a")), "--json"))["clients"][0]
    assert offline["generation_stored_bytes"] == entry["generation_stored_bytes"]

    human = daemon.cli("list").stdout.decode()
    assert "EARLIER GENS" in human
    row = next(line for line in human.splitlines() if line.startswith("a "))
    assert " 1 / " in row
    assert "earlier generation(s) of rewritten rounds" in " ".join(human.split())
    detail = " ".join(daemon.cli("list", "--client", "a").stdout.decode().split())
    assert "1 earlier generation(s):" in detail
