"""``chunkd restore --replica`` for a client the host has no rounds of names the clients it has
(issue 21, friction 2: the offline side of "say which ids exist")."""

from __future__ import annotations

from pathlib import Path

from chunkd.replica.bucket import Bucket

from .conftest import WeedServer, ingest_rounds
from .test_cli import chunkd
from .test_upload_restore import upload_all


def test_unknown_client_in_the_replica_names_the_clients_it_has(
    bucket: Bucket, s3_server: WeedServer, tmp_path: Path
) -> None:
    for client in ("12", "3", "b"):
        with ingest_rounds(tmp_path / f"{client}.db", tmp_path / client, range(1, 2)) as store:
            upload_all(bucket, store, "site7", client)
    config = tmp_path / "chunkd.toml"
    config.write_text(
        f'watch_root = "fl"\n[replica]\nurl = "{bucket.url}"\n'
        f'endpoint = "{s3_server.endpoint}"\nhost = "site7"\n'
    )
    for round_arg in ([], ["--round", "1"]):
        missing = chunkd(
            "restore", "--config", str(config), "--replica", "--client", "9", *round_arg, "-o", "-"
        )
        assert missing.returncode == 3, missing.stderr  # not_found, as before
        message = missing.stderr.decode()
        assert message.count("\n") == 1, message
        assert "no client '9' on host site7" in message and "no rounds" in message
        assert message.rstrip().endswith("clients with rounds: 3, 12, b"), message
    # a known client's missing round is still "no round N", not "no client"
    no_round = chunkd(
        "restore", "--config", str(config), "--replica", "--client", "3", "--round", "5", "-o", "-"
    )
    assert no_round.returncode == 3 and b"has no round 5" in no_round.stderr, no_round.stderr
