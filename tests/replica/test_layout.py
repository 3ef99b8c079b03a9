"""The bucket layout, the manifest format, the sweep plan and the [replica] config: no server."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from chunkd.config import settings_from_mapping
from chunkd.errors import ConfigError, IntegrityError, RequestError
from chunkd.manifest import RoundLayout
from chunkd.replica.layout import (
    ChunkForm,
    ManifestChunk,
    ManifestVersion,
    ReplicaURL,
    RoundManifest,
    chunk_key,
    hash_of_chunk_key,
    manifest_key,
    parse_manifest_key,
)
from chunkd.replica.prune import plan_sweep
from chunkd.retention import newest

H1 = hashlib.sha256(b"one").hexdigest()
H2 = hashlib.sha256(b"two").hexdigest()
H3 = hashlib.sha256(b"three").hexdigest()


def test_url_and_keys() -> None:
    url = ReplicaURL.parse("s3://my-bucket/fl/site1/")
    assert (url.bucket, url.prefix) == ("my-bucket", "fl/site1")
    assert chunk_key(url, H1) == f"fl/site1/chunks/{H1[:2]}/{H1}"
    assert hash_of_chunk_key(url, chunk_key(url, H1)) == H1
    assert hash_of_chunk_key(url, f"fl/site1/chunks/zz/{H1}") is None  # wrong shard
    key = manifest_key(url, "hostA", "7", 12)
    assert key == "fl/site1/hosts/hostA/clients/7/rounds/12"
    assert parse_manifest_key(url, key) == ("hostA", "7", 12)
    assert parse_manifest_key(url, "fl/site1/hosts/hostA/clients/7/rounds/x") is None
    assert ReplicaURL.parse("s3://bucket").key("gc-epoch") == "gc-epoch"
    for bad in ("http://bucket/x", "s3://B/x", "s3://bucket/a//b", "s3://bucket/../x"):
        with pytest.raises(RequestError):
            ReplicaURL.parse(bad)
    with pytest.raises(IntegrityError):
        chunk_key(url, "../../etc/passwd")


def _manifest() -> RoundManifest:
    layout = RoundLayout(file_size=10, file_sha256=H3, storages=(), segments=(("r", 10),))
    form = ChunkForm(H1, "xbgz4", 16, H2)
    return RoundManifest(
        host="h",
        client_id="1",
        round_num=3,
        layout=layout,
        residue_zstd=b"\x28\xb5\x2f\xfd",
        chunks=(ManifestChunk(0, H1, '{"w":[[0,4,[4]]]}', 4, form),),
        bases=(ChunkForm(H2, "bgz4", 16, None),),
        source_path="/srv/fl/client_1/r3.pth",
        created_at="2026-01-01 00:00:00",
        uploaded_at="2026-01-01T00:00:01+00:00",
    )


def test_manifest_round_trips_and_names_every_chunk_it_needs() -> None:
    m = _manifest()
    data = m.to_json()
    doc = json.loads(data)
    assert doc["format"] == "chunkd-replica-round" and doc["chunks"][0]["base"] == H2
    back = RoundManifest.from_json(data, where="k")
    assert back == m
    assert m.referenced_hashes() == {H1, H2}
    assert ChunkForm.from_metadata(H1, m.chunks[0].form.metadata()) == m.chunks[0].form


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.update(version=99),
        lambda d: d["chunks"][0].update(hash="nothex"),
        lambda d: d["residue"].update(encoding="gzip"),
        lambda d: d.pop("layout"),
    ],
)
def test_a_damaged_manifest_is_an_integrity_error(damage) -> None:
    doc = json.loads(_manifest().to_json())
    damage(doc)
    with pytest.raises(IntegrityError, match="damaged round manifest"):
        RoundManifest.from_json(json.dumps(doc).encode(), where="k")


def test_a_manifest_records_its_version_and_an_old_one_is_run_0() -> None:
    m = replace(_manifest(), run=4, generation=2)
    doc = json.loads(m.to_json())
    assert (doc["run"], doc["generation"]) == (4, 2)
    assert RoundManifest.from_json(m.to_json(), where="k").version == ManifestVersion(3, 4, 2, H3)
    assert m.metadata() == {
        "chunkd-file-sha256": H3,
        "chunkd-run": "4",
        "chunkd-generation": "2",
    }
    assert ManifestVersion.from_metadata(3, m.metadata(), where="k") == m.version
    # written before manifests carried a version: the body and the metadata say nothing
    del doc["run"], doc["generation"]
    old = RoundManifest.from_json(json.dumps(doc).encode(), where="k")
    assert (old.run, old.generation) == (0, 0)
    legacy = ManifestVersion.from_metadata(3, {"chunkd-file-sha256": H3}, where="k")
    assert legacy == ManifestVersion(3, 0, 0, H3)
    for bad in ({"chunkd-run": "-1"}, {"chunkd-run": "x"}, {"chunkd-generation": "1.5"}):
        with pytest.raises(IntegrityError, match="damaged manifest metadata"):
            ManifestVersion.from_metadata(3, bad, where="k")
    doc["run"] = -2
    with pytest.raises(IntegrityError, match="damaged round manifest"):
        RoundManifest.from_json(json.dumps(doc).encode(), where="k")


def test_newest_cuts_by_run_then_round_number() -> None:
    """Run A's rounds 1-6 (run 0), then a rerun rewrote 2 and 3 (runs 1 and 2)."""
    versions = [ManifestVersion(r, 0, 0, H1) for r in (1, 4, 5, 6)]
    versions += [ManifestVersion(2, 1, 1, H2), ManifestVersion(3, 2, 1, H3)]
    assert [v.round_num for v in newest(versions, 3)] == [6, 2, 3]
    assert [v.round_num for v in newest(versions, 0)] == [1, 4, 5, 6, 2, 3]
    assert newest(versions, 10) == newest(versions, 0)
    with pytest.raises(ValueError):
        newest(versions, -1)


def test_sweep_plan_keeps_marked_and_young_chunks() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    old, young = now - timedelta(hours=2), now - timedelta(minutes=5)
    listed = [(H1, 10, old), (H2, 20, old), (H3, 30, young)]
    remove, kept, grace = plan_sweep(listed, {H1}, now - timedelta(hours=1))
    assert remove == [(H2, 20)] and kept == 1 and grace == 1


def test_replica_config() -> None:
    settings = settings_from_mapping(
        {"replica": {"url": "s3://b-1/p", "max_upload_rate": "10MB", "prune_interval": "5m"}},
        source="t",
    )
    r = settings.replica
    assert r is not None and r.url == "s3://b-1/p" and r.max_upload_rate == 10_000_000
    assert r.prune_interval_s == 300 and r.gc_grace_s == 3600 and r.replica_keep_rounds == 0
    assert settings_from_mapping({"replica": {}}, source="t").replica is None
    assert settings_from_mapping({}, source="t").replica is None
    for bad, key in (
        ({"url": "s3://b-1/p", "secret_key": "x"}, "replica.secret_key"),
        ({"url": "s3://b-1/p", "aws_access_key_id": "x"}, "replica.aws_access_key_id"),
        ({"endpoint": "http://x"}, "replica.url"),
        ({"url": "http://b/p"}, "replica.url"),
        ({"url": "s3://b-1/p//q"}, "replica.url"),
        ({"url": "s3://b-1/./q"}, "replica.url"),
        ({"url": "s3://b-1/p", "host": "a/b"}, "replica.host"),
        ({"url": "s3://b-1/p", "endpoint": "minio:9000"}, "replica.endpoint"),
        ({"url": "s3://b-1/p", "replica_keep_rounds": -1}, "replica.replica_keep_rounds"),
        ({"url": "s3://b-1/p", "bucket": "x"}, "replica.bucket"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            settings_from_mapping({"replica": bad}, source="t")
