"""A job restarted into its directory, through a real daemon (issue 17, finding 1).

Rounds 1-10 with keep 5 and ``delete_after_ingest``, then the job restarts from round 1. The
restarted job's rounds used to join the old run, sort oldest and be pruned by the next retention
pass; their files were already deleted, so nothing of the restarted job was left and ``latest``
still answered the old run's round 10.
"""

from __future__ import annotations

import json
import time

from tests.daemon.checkpoints import save_model


def test_a_restarted_job_keeps_its_rounds_through_the_daemon(make_daemon, tmp_path):
    daemon = make_daemon(chunk_keep_rounds=5, retention_interval="0.5s", delete_after_ingest=True)
    client = daemon.watch_root / "client_1"
    for r in range(1, 11):
        save_model(client / f"model_round_{r}.pth", seed=r)
        daemon.wait_event(
            lambda e, r=r: e["event"] == "checkpoint.ingested" and e.get("round") == r
        )
    daemon.wait_event(lambda e: e["event"] == "retention.pruned" and 5 in e["rounds_removed"])
    time.sleep(0.05)  # a restart is a new process: its files are written after the old ones
    restarted = {}
    for r in range(1, 6):
        restarted[r] = save_model(client / f"model_round_{r}.pth", seed=100 + r)
        daemon.wait_event(
            lambda e, r=r: e["event"] == "checkpoint.ingested" and e.get("round") == r,
            count=2,
        )
    daemon.wait_event(lambda e: e["event"] == "retention.pruned" and 10 in e["rounds_removed"])
    assert daemon.rounds("1") == [1, 2, 3, 4, 5]
    dry = daemon.cli("prune", "--client", "1", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    (plan,) = json.loads(dry.stdout)["clients"]
    assert plan["rounds_removed"] == [] and plan["rounds_kept"] == [1, 2, 3, 4, 5]
    latest = daemon.cli("restore", "--client", "1", "--round", "latest", "-o", "-")
    assert latest.returncode == 0, latest.stderr
    assert latest.stdout == restarted[5]
    for r, data in restarted.items():
        out = daemon.cli("restore", "--client", "1", "--round", str(r), "-o", "-")
        assert out.returncode == 0, out.stderr
        assert out.stdout == data, f"round {r} is not the restarted job's"
