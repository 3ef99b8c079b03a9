"""The CLI against a real daemon (issue 10 items 2, 3, 7, 11; issue 9 item 3): status counts and
names errors, ingest refusals exit non-zero, restore never overwrites a database or a client's
file, "not stored" lists the stored rounds, list reports the database as the disk sees it."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
from checkpoints import save_model  # tests/daemon's builder: one definition

sys.path.pop(0)


def ingested_rounds(daemon, client: str, count: int) -> None:
    daemon.wait_event(
        lambda e: (
            e["event"] in ("checkpoint.ingested", "checkpoint.duplicate")
            and e.get("client") == client
        ),
        count=count,
        timeout_s=60,
    )


def status(daemon) -> dict[str, object]:
    result = daemon.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_rejected_file_is_an_error_in_status_until_ingested(make_daemon) -> None:
    daemon = make_daemon()
    bad = daemon.watch_root / "client_1" / "model_round_1.pth"
    bad.parent.mkdir()
    bad.write_bytes(b"this is plain text, not a checkpoint\n" * 10)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.rejected")
    doc = status(daemon)
    entry = doc["clients"]["1"]
    assert entry["rejected"] == 1
    assert entry["last_error"]["path"] == str(bad)
    assert doc["last_error"]["client"] == "1"
    # explicit ingest of the same unchanged file: a refusal with its reason, exit 4
    again = daemon.cli("ingest", str(bad), "--client", "1")
    assert again.returncode == 4, again
    message = again.stderr.decode()
    assert message.count("\n") == 1 and "rejected" in message and "round None" not in message
    # the same path, now a real checkpoint: stored, and the error is cleared
    save_model(bad.with_suffix(".tmp"), 1)
    os.replace(bad.with_suffix(".tmp"), bad)
    ingested_rounds(daemon, "1", 1)
    doc = status(daemon)
    assert doc["clients"]["1"]["last_error"] is None
    assert doc["last_error"] is None


def test_unopenable_database_counts_as_an_error(make_daemon) -> None:
    daemon = make_daemon(start=False)
    (daemon.db("2")).mkdir(parents=True)  # the database path is a directory: cannot open
    daemon.start()
    daemon.wait_event(lambda e: e["event"] == "ingest.failed" and e.get("client") == "2")
    doc = status(daemon)
    assert doc["errors"] >= 1
    assert doc["clients"]["2"]["errors"] >= 1
    assert doc["clients"]["2"]["last_error"]["error"]


def test_status_table_fits_100_columns(make_daemon) -> None:
    daemon = make_daemon()
    long_id = "x" * 60
    path = daemon.watch_root / f"client_{long_id}" / ("m" * 90 + "_round_1.pth")
    path.parent.mkdir()
    path.write_bytes(b"garbage, rejected with a long path in last_error" * 3)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.rejected")
    save_model(daemon.watch_root / "client_1" / "model_round_1.pth", 1)
    ingested_rounds(daemon, "1", 1)
    result = daemon.cli("status")
    assert result.returncode == 0
    lines = result.stdout.decode().splitlines()
    assert max(len(line) for line in lines) <= 100, "\n".join(lines)
    text = "\n".join(lines)
    assert "ERRORS" in text and "REJECTED" in text and "last errors" in text


def test_restore_refuses_databases_and_client_files(make_daemon, tmp_path: Path) -> None:
    daemon = make_daemon()
    client_dir = daemon.watch_root / "client_1"
    own = client_dir / "model_round_1.pth"
    content = save_model(own, 1)
    ingested_rounds(daemon, "1", 1)
    db = daemon.db("1")
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    link = tmp_path / "looks-harmless.pth"
    link.symlink_to(db)
    sidecars = (Path(f"{db}-journal"), Path(f"{db}.lock"))
    for target in (db, *sidecars, own, client_dir / "new.pth", link):
        result = daemon.cli("restore", "--client", "1", "-o", str(target))
        assert result.returncode == 2, (target, result)
        # only a client's directory yields to --force (tests/cli/test_output_guard.py)
        assert (b"--force" in result.stderr) == (target in (own, client_dir / "new.pth"))
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert own.read_bytes() == content
    assert not (client_dir / "new.pth").exists()
    # an export is held to the same rule
    result = daemon.cli("export", "--client", "1", "--format", "safetensors", "-o", str(db))
    assert result.returncode == 2
    # --force writes where it is told, but never onto a database, even a copy outside every client
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    for extra in ((), ("--force",)):
        refused = daemon.cli("restore", "--client", "1", "-o", str(copy), *extra)
        assert refused.returncode == 2
    forced = daemon.cli("restore", "--client", "1", "-o", str(own), "--force")
    assert forced.returncode == 0, forced.stderr
    assert own.read_bytes() == content


def test_round_not_stored_lists_the_stored_rounds(make_daemon, tmp_path: Path) -> None:
    daemon = make_daemon()
    for round_num in (1, 2):
        save_model(daemon.watch_root / "client_1" / f"model_round_{round_num}.pth", round_num)
    ingested_rounds(daemon, "1", 2)
    result = daemon.cli("restore", "--client", "1", "--round", "99", "-o", str(tmp_path / "x"))
    assert result.returncode == 3
    assert b"stored rounds: 1, 2" in result.stderr


def test_restore_into_a_missing_directory_exits_2(make_daemon, tmp_path: Path) -> None:
    daemon = make_daemon()
    save_model(daemon.watch_root / "client_1" / "model_round_1.pth", 1)
    ingested_rounds(daemon, "1", 1)
    result = daemon.cli("restore", "--client", "1", "-o", str(tmp_path / "no" / "such" / "x"))
    assert result.returncode == 2
    assert b"create it first" in result.stderr


def test_list_reports_the_database_as_the_disk_sees_it(make_daemon) -> None:
    daemon = make_daemon()
    for round_num in (1, 2, 3):
        save_model(
            daemon.watch_root / "client_1" / f"model_round_{round_num}.pth",
            0,  # equal tensors: rounds 2 and 3 store no new chunk bytes
            elements=300_000,
            round_num=round_num,
        )
    ingested_rounds(daemon, "1", 3)
    doc = json.loads(daemon.cli("list", "--json").stdout)
    (entry,) = doc["clients"]
    db_size = daemon.db("1").stat().st_size
    assert entry["db_bytes"] >= db_size
    assert entry["disk_ratio"] == pytest.approx(entry["file_bytes"] / entry["db_bytes"], abs=1e-3)
    assert entry["disk_ratio"] > 1  # three equal rounds: the database is smaller than them
    assert entry["dedup_ratio"] >= 1 and entry["compression_ratio"] >= 1
    product = entry["dedup_ratio"] * entry["compression_ratio"]
    assert product == pytest.approx(entry["disk_ratio"], rel=1e-2)
    files = list((daemon.watch_root / "client_1").glob("*.pth"))
    assert entry["files_on_disk"] == 3
    assert entry["files_on_disk_bytes"] == sum(p.stat().st_size for p in files)
    human = daemon.cli("list").stdout.decode()
    assert "DATABASE" in human and ".PTH LEFT" in human
    assert "still in the client directories" in human


def test_prune_dry_run_changes_nothing(make_daemon) -> None:
    daemon = make_daemon(chunk_keep_rounds=1)
    # One round at a time: the round committed last is never pruned, and two files written at
    # once may be taken in either order (CI once committed round 1 last and nothing was removed).
    for round_num in (1, 2):
        save_model(daemon.watch_root / "client_1" / f"model_round_{round_num}.pth", round_num)
        ingested_rounds(daemon, "1", round_num)
    dry = daemon.cli("prune", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    (entry,) = json.loads(dry.stdout)["clients"]
    assert entry["rounds_removed"] == [1] and entry["dry_run"] is True
    with sqlite3.connect(daemon.db("1")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM rounds").fetchone()[0] == 2


def test_prune_dry_run_is_not_refused_as_a_change(make_daemon) -> None:
    """A dry run changes nothing, so it is a read; tenants' access to it (and a real prune's
    refusal) is tested with real second uids in tests/reliability/test_access.py."""
    daemon = make_daemon(allowed_uids=[os.getuid() + 4242])
    save_model(daemon.watch_root / "client_1" / "model_round_1.pth", 1)
    ingested_rounds(daemon, "1", 1)
    dry = daemon.cli("prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr


def test_a_rerun_keeps_the_earlier_version_restorable(make_daemon, tmp_path) -> None:
    """SPEC "Rounds": the same path rewritten keeps the earlier version as a generation, shown by
    ``list`` and restored with ``--generation``; ``round.replaced`` warns with both hashes."""
    daemon = make_daemon()
    path = daemon.watch_root / "client_1" / "model_round_1.pth"
    first = save_model(path, 1)
    ingested_rounds(daemon, "1", 1)
    second = save_model(path, 2)
    (replaced,) = daemon.wait_event(lambda e: e["event"] == "round.replaced", timeout_s=60)
    assert replaced["level"] == "warning"
    assert replaced["previous_sha256"] == hashlib.sha256(first).hexdigest()
    assert replaced["sha256"] == hashlib.sha256(second).hexdigest()
    out_now, out_then = tmp_path / "now.pth", tmp_path / "then.pth"
    assert (
        daemon.cli("restore", "--client", "1", "--round", "1", "-o", str(out_now)).returncode == 0
    )
    then = daemon.cli(
        "restore", "--client", "1", "--round", "1", "--generation", "0", "-o", str(out_then)
    )
    assert then.returncode == 0, then.stderr
    assert out_now.read_bytes() == second and out_then.read_bytes() == first
    listed = json.loads(daemon.cli("list", "--client", "1", "--json").stdout)
    (entry,) = listed["clients"]
    assert [(r["round"], r["generation"]) for r in entry["rounds"]] == [(1, 1)]
    assert [(r["round"], r["generation"]) for r in entry["generations"]] == [(1, 0)]
    assert b"(earlier)" in daemon.cli("list", "--client", "1").stdout
