"""``chunkd restore --replica`` / ``chunkd list --replica`` as a user runs them: a subprocess."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from chunkd.replica.bucket import Bucket

from .conftest import WeedServer, ingest_rounds
from .test_upload_restore import upload_all


def chunkd(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", *args], capture_output=True, timeout=120
    )


def test_bare_replica_flag_uses_the_config(
    bucket: Bucket, s3_server: WeedServer, tmp_path: Path
) -> None:
    with ingest_rounds(tmp_path / "c.db", tmp_path / "c", range(1, 3)) as store:
        upload_all(bucket, store, "site7", "1")
        sha = {r.round_num: r.file_sha256 for r in store.list_rounds()}
    config = tmp_path / "chunkd.toml"
    config.write_text(
        f'watch_root = "fl"\n[replica]\nurl = "{bucket.url}"\n'
        f'endpoint = "{s3_server.endpoint}"\nhost = "site7"\n'
    )
    listed = chunkd("list", "--config", str(config), "--replica", "--client", "1", "--json")
    assert listed.returncode == 0, listed.stderr
    rounds = json.loads(listed.stdout)["rounds"]
    assert [(r["host"], r["round"], r["file_sha256"]) for r in rounds] == [
        ("site7", 1, sha[1]),
        ("site7", 2, sha[2]),
    ]
    to_stdout = chunkd("restore", "--config", str(config), "--replica", "--client", "1", "-o", "-")
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert hashlib.sha256(to_stdout.stdout).hexdigest() == sha[2]  # latest by default
    out = tmp_path / "r1.pth"
    done = chunkd(
        "restore", "--config", str(config), "--replica", "--client", "1", "--round", "1",
        "-o", str(out), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sha256"] == sha[1]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha[1]
    missing = chunkd("restore", "--config", str(config), "--replica", "--client", "9", "-o", "-")
    assert missing.returncode == 3 and b"no rounds" in missing.stderr


def test_replica_flag_without_a_url_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "chunkd.toml"
    config.write_text('watch_root = "fl"\n')
    done = chunkd("list", "--config", str(config), "--replica")
    assert done.returncode == 2 and b"--replica" in done.stderr


def test_prune_replica_from_the_command_line(
    bucket: Bucket, s3_server: WeedServer, tmp_path: Path
) -> None:
    with ingest_rounds(tmp_path / "c.db", tmp_path / "c", range(1, 4)) as store:
        upload_all(bucket, store, "site7", "1")
    where = ("--replica", str(bucket.url), "--endpoint", s3_server.endpoint, "--host", "site7")
    dry = chunkd("prune", *where, "--keep", "1", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["rounds_removed"] == {"1": [1, 2]}
    done = chunkd("prune", *where, "--keep", "1", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["rounds_removed"] == {"1": [1, 2]} and doc["chunks_in_grace"] > 0  # 1 h grace
    listed = chunkd("list", *where, "--client", "1", "--json")
    assert [r["round"] for r in json.loads(listed.stdout)["rounds"]] == [3]


def test_an_unreadable_manifest_is_listed_in_place_and_reported_by_prune(
    bucket: Bucket, s3_server: WeedServer, tmp_path: Path
) -> None:
    """The CLI shows what the sweep quarantines instead of failing on it (issue 19)."""
    from chunkd.replica.layout import manifest_key

    with ingest_rounds(tmp_path / "c.db", tmp_path / "c", range(1, 3)) as store:
        upload_all(bucket, store, "site7", "1")
    bucket.put(manifest_key(bucket.url, "site7", "1", 1), b'{"format": 1, "chunks": [')
    where = ("--replica", str(bucket.url), "--endpoint", s3_server.endpoint, "--host", "site7")
    listed = chunkd("list", *where, "--client", "1", "--json")
    assert listed.returncode == 0, listed.stderr
    rounds = {r["round"]: r for r in json.loads(listed.stdout)["rounds"]}
    assert "error" in rounds[1] and rounds[2]["chunks"] > 0
    human = chunkd("list", *where, "--client", "1")
    assert human.returncode == 0 and b"unreadable" in human.stdout, human.stderr
    pruned = chunkd("prune", *where, "--keep", "5", "--dry-run")
    assert pruned.returncode == 0, pruned.stderr
    assert b"quarantined: host site7 client 1 round 1" in pruned.stdout, pruned.stdout
