"""``chunkd forget`` through a real daemon and offline (issue 17, finding 8)."""

from __future__ import annotations

import json

from tests.daemon.checkpoints import save_model


def ingested(daemon, round_num: int, count: int = 1) -> None:
    daemon.wait_event(
        lambda e: e["event"] == "checkpoint.ingested" and e.get("round") == round_num, count=count
    )


def test_forget_removes_a_mis_numbered_round_through_the_daemon(make_daemon):
    daemon = make_daemon(chunk_keep_rounds=3)
    client = daemon.watch_root / "client_1"
    files = {}
    for r in (1, 2):
        files[r] = save_model(client / f"model_round_{r}.pth", seed=r)
        ingested(daemon, r)
    save_model(client / "model_240605.pth", seed=99)
    ingested(daemon, 240605)
    files[3] = save_model(client / "model_round_3.pth", seed=3)
    ingested(daemon, 3)

    dry = daemon.cli("forget", "--client", "1", "--round", "240605", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.decode().startswith("would forget round 240605 generation 0 of client 1")
    assert daemon.rounds("1") == [1, 2, 3, 240605]

    done = daemon.cli("forget", "--client", "1", "--round", "240605", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["round"] == 240605 and answer["was_current"] and answer["chunks_removed"] > 0
    (event,) = daemon.wait_event(lambda e: e["event"] == "round.forgotten")
    assert event["level"] == "warning" and event["client"] == "1" and event["round"] == 240605
    assert event["source_path"].endswith("model_240605.pth")
    assert daemon.rounds("1") == [1, 2, 3]
    latest = daemon.cli("restore", "--client", "1", "-o", "-")
    assert latest.returncode == 0 and latest.stdout == files[3]

    gone = daemon.cli("forget", "--client", "1", "--round", "240605")
    assert gone.returncode == 3, gone.stderr  # not_found
    assert b"stored rounds: 1, 2, 3" in gone.stderr

    daemon.stop()
    offline = daemon.cli("forget", "--db", str(daemon.db("1")), "--client", "1", "--round", "1")
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.decode().startswith("forgot round 1 generation 0 of client 1")
    assert daemon.rounds("1") == [2, 3]
