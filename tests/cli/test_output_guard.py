"""``-o`` cannot be talked onto chunkd's own files (issue 17, finding 5; SPEC "The socket
protocol": "never onto a chunkd database, journal or lock file, forced or not").

``restore … -o <db> --force`` used to exit 0 and replace the client's database: every round
gone, later ingests failing "file is not a database". Now a database (any SQLite file, a
configured or daemon-reported one, the ``--db`` being read), its journal, WAL, shared-memory,
lock and attempt files, and the daemon's socket are refused with or without ``--force``, directly
or through a symlink, by ``restore`` and ``export``, through the daemon and offline; and that
refusal does not suggest ``--force``. Only a watched client directory yields to ``--force``.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
from checkpoints import restored_bytes, save_model  # tests/daemon's builder: one definition

sys.path.pop(0)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chunkd_files(db: Path, tmp_path: Path) -> list[Path]:
    """Every kind of chunkd file beside ``db`` (existing or not), and symlinks to some."""
    wal_link = tmp_path / "wal-link.pth"
    wal_link.symlink_to(f"{db}-wal")  # a link to a sidecar that does not exist right now
    db_link = tmp_path / "looks-harmless.pth"
    db_link.symlink_to(db)
    dir_link = tmp_path / "dir-link"
    dir_link.symlink_to(db.parent, target_is_directory=True)
    suffixes = ("", "-journal", "-wal", "-shm", ".lock", ".attempt", ".attempt.tmp")
    return [Path(f"{db}{s}") for s in suffixes] + [db_link, wal_link, dir_link / db.name]


def assert_refused_without_a_hint(result, target: Path) -> None:
    assert result.returncode == 2, (target, result)
    message = result.stderr.decode()
    assert "refusing to write" in message and "--force" not in message, (target, message)


def test_force_never_writes_onto_a_database_through_the_daemon(make_daemon, tmp_path: Path):
    daemon = make_daemon()
    client_dir = daemon.watch_root / "client_1"
    first = save_model(client_dir / "model_round_1.pth", 1)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=1, timeout_s=60)
    db = daemon.db("1")
    (Path(f"{db}.attempt")).write_text("{}")  # as a lane leaves it while ingesting
    outside = tmp_path / "outside"
    outside.mkdir()
    copy = outside / "copy.db"  # a SQLite file outside every client: still a database
    copy.write_bytes(db.read_bytes())
    before = digest(copy)
    socket_lock = Path(f"{daemon.socket}.lock")
    targets = [*chunkd_files(db, outside), copy, daemon.socket, socket_lock]
    for target in targets:
        result = daemon.cli("restore", "--client", "1", "-o", str(target), "--force")
        assert_refused_without_a_hint(result, target)
    for target in (db, Path(f"{db}-wal"), Path(f"{db}.attempt"), outside / "looks-harmless.pth"):
        result = daemon.cli("restore", "--client", "1", "-o", str(target))
        assert_refused_without_a_hint(result, target)
        for transfer in ("fd", "frames"):
            args = ("--format", "safetensors", "--transfer", transfer, "--force")
            result = daemon.cli("export", "--client", "1", "-o", str(target), *args)
            assert_refused_without_a_hint(result, target)
    assert digest(copy) == before and daemon.socket.is_socket()
    assert daemon.cli("status").returncode == 0
    # the database (which the daemon may write meanwhile) still takes rounds and gives them back
    second = save_model(client_dir / "model_round_2.pth", 2)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=2, timeout_s=60)
    assert restored_bytes(db, 1) == first and restored_bytes(db, 2) == second


def test_force_opens_only_the_client_directory(make_daemon, tmp_path: Path):
    daemon = make_daemon()
    client_dir = daemon.watch_root / "client_1"
    content = save_model(client_dir / "model_round_1.pth", 1)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=1, timeout_s=60)
    inside = client_dir / "restored.pth"
    link = tmp_path / "into-the-client.pth"
    link.symlink_to(inside)
    for target in (inside, link):
        refused = daemon.cli("restore", "--client", "1", "-o", str(target))
        assert refused.returncode == 2, refused
        assert b"watched client directory" in refused.stderr and b"--force" in refused.stderr
    assert not inside.exists()
    forced = daemon.cli("restore", "--client", "1", "-o", str(inside), "--force")
    assert forced.returncode == 0, forced.stderr
    assert inside.read_bytes() == content
    exported = client_dir / "model.safetensors"
    args = ("--format", "safetensors", "-o", str(exported), "--force")
    assert daemon.cli("export", "--client", "1", *args).returncode == 0
    assert exported.read_bytes()[8:9] == b"{"  # a safetensors header follows its length


def test_force_never_writes_onto_a_database_offline(
    chunkd_run: Callable[..., object], tmp_path: Path
):
    """The ``--db`` forms: the database being read, a configured ``db_path`` (even one not created
    yet), and their sidecars, directly and through links."""
    (tmp_path / "chunkd.toml").write_text(
        'watch_root = "fl"\nsocket = "run/c.sock"\ndb_path = "dbs/{client}.db"\n'
    )
    (tmp_path / "dbs").mkdir()
    db = tmp_path / "dbs" / "4.db"
    checkpoint = tmp_path / "model_round_1.pth"
    content = save_model(checkpoint, 1)
    config = ("--config", str(tmp_path / "chunkd.toml"))
    ingested = chunkd_run("ingest", checkpoint, "--client", "4", "--db", db, *config, cwd=tmp_path)
    assert ingested.returncode == 0, ingested.stderr
    before = digest(db)
    outside = tmp_path / "outside"
    outside.mkdir()
    not_yet = tmp_path / "dbs" / "5.db"  # client 5's database by db_path, not created yet
    targets = [*chunkd_files(db, outside), not_yet, Path(f"{not_yet}-journal")]
    for target in targets:
        result = chunkd_run("restore", "--db", db, "-o", target, "--force", *config, cwd=tmp_path)
        assert_refused_without_a_hint(result, target)
    for target in (db, Path(f"{db}.lock"), outside / "looks-harmless.pth", not_yet):
        result = chunkd_run(
            "export",
            "--db",
            db,
            "--format",
            "safetensors",
            "-o",
            target,
            "--force",
            *config,
            cwd=tmp_path,
        )
        assert_refused_without_a_hint(result, target)
    # without a config (the built-in defaults): the --db being read is still protected
    bare = chunkd_run("restore", "--db", db, "-o", db, "--force", cwd=tmp_path)
    assert_refused_without_a_hint(bare, db)
    assert digest(db) == before and not not_yet.exists()
    assert restored_bytes(db, 1) == content
    fine = chunkd_run("restore", "--db", db, "-o", outside / "r.pth", *config, cwd=tmp_path)
    assert fine.returncode == 0, fine.stderr
    assert (outside / "r.pth").read_bytes() == content
