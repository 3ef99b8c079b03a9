"""The ``--db`` forms as a new operator meets them (issue 10, items 4, 10, 11): the client comes
from the database's name, ``prune`` takes the config's ``chunk_keep_rounds``, ``ingest`` the
config's ``delta``, wrong paths get their proper exit status, and ratios are honest."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

CONFIG = "chunkd.toml"


def save(path: Path, seed: int, elements: int = 200_000, changed: int = 0) -> None:
    """A model; ``changed`` > 0 perturbs that many weights of seed 0 (a next round)."""
    generator = torch.Generator().manual_seed(0 if changed else seed)
    weight = torch.randn(elements, generator=generator)
    if changed:
        weight[:changed] += 0.001 * seed
    torch.save({"model": {"w": weight, "b": torch.zeros(8)}}, path)


@pytest.fixture
def chunkd_run(chunkd_run: Callable[..., object]) -> Callable[..., object]:
    """Every call reads ``chunkd.toml`` of its working directory (``--config``)."""

    def run(*args: object, cwd: Path) -> object:
        return chunkd_run(*args, "--config", cwd / CONFIG, cwd=cwd)

    return run


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / CONFIG).write_text('watch_root = "fl"\nsocket = "run/c.sock"\n')
    return tmp_path


@pytest.fixture(scope="module")
def built_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``client_4_chunks.db`` with rounds 1, 2, 3, built once with ``chunkd ingest --db``."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("db-forms")
    (root / CONFIG).write_text('watch_root = "fl"\nsocket = "run/c.sock"\n')
    db = root / "client_4_chunks.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("CHUNKD_CONFIG", None)
    for round_num in (1, 2, 3):
        path = root / f"model_round_{round_num}.pth"
        save(path, round_num, elements=5000)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "chunkd.cli.main",
                "ingest",
                str(path),
                "--client",
                "4",
                "--db",
                str(db),
                "--config",
                str(root / CONFIG),
            ],
            check=True,
            capture_output=True,
            cwd=root,
            env=env,
            timeout=120,
        )
    return db


@pytest.fixture
def db_with_rounds(built_db: Path, workdir: Path) -> Path:
    """A copy of :func:`built_db` in this test's own directory, which it may change."""
    db = workdir / built_db.name
    shutil.copy(built_db, db)
    return db


def test_client_comes_from_the_database_name(db_with_rounds: Path, chunkd_run) -> None:
    cwd = db_with_rounds.parent
    out = cwd / "out.pth"
    wrong = chunkd_run("restore", "--db", db_with_rounds, "--client", "WRONG", "-o", out, cwd=cwd)
    assert wrong.returncode == 2
    assert b"client '4'" in wrong.stderr and not out.exists()
    right = chunkd_run("restore", "--db", db_with_rounds, "-o", out, cwd=cwd)
    assert right.returncode == 0, right.stderr
    assert right.stdout.startswith(b"restored client 4 round 3")
    listed = json.loads(chunkd_run("list", "--db", db_with_rounds, "--json", cwd=cwd).stdout)
    assert listed["clients"][0]["client"] == "4"
    human = chunkd_run("list", "--db", db_with_rounds, cwd=cwd).stdout.decode()
    assert human.startswith("client 4:")


def test_prune_db_uses_chunk_keep_rounds_and_dry_run_only_reads(
    db_with_rounds: Path, chunkd_run
) -> None:
    cwd = db_with_rounds.parent
    (cwd / CONFIG).write_text('watch_root = "fl"\nchunk_keep_rounds = 2\n')
    before = db_with_rounds.read_bytes()
    dry = chunkd_run("prune", "--db", db_with_rounds, "--dry-run", "--json", cwd=cwd)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["clients"][0]["rounds_removed"] == [1]
    assert db_with_rounds.read_bytes() == before
    done = chunkd_run("prune", "--db", db_with_rounds, "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db_with_rounds) as conn:
        rounds = [r for (r,) in conn.execute("SELECT round_num FROM rounds ORDER BY round_num")]
    assert rounds == [2, 3]


def test_wrong_paths_get_their_exit_status(db_with_rounds: Path, chunkd_run) -> None:
    cwd = db_with_rounds.parent
    not_db = cwd / "notes.db"
    not_db.write_text("just text\n" * 20)
    for args, status in [
        (("restore", "--db", not_db, "--client", "1", "-o", cwd / "x.pth"), 2),
        (("list", "--db", not_db), 2),
        (("verify", "--db", not_db), 2),
        (("list", "--db", cwd / "missing.db"), 3),
        (("restore", "--db", db_with_rounds, "-o", cwd / "no" / "dir" / "x.pth"), 2),
        (("restore", "--db", db_with_rounds, "--round", "99", "-o", cwd / "x.pth"), 3),
    ]:
        result = chunkd_run(*args, cwd=cwd)
        assert result.returncode == status, (args, result)
        assert result.stderr.decode().count("\n") == 1
        assert b"internal error" not in result.stderr
    missing_round = chunkd_run(
        "restore", "--db", db_with_rounds, "--round", "99", "-o", cwd / "x.pth", cwd=cwd
    )
    assert b"stored rounds: 1, 2, 3" in missing_round.stderr


def test_restore_db_refuses_to_overwrite_a_database(db_with_rounds: Path, chunkd_run) -> None:
    cwd = db_with_rounds.parent
    other = cwd / "client_5_chunks.db"
    shutil.copy(db_with_rounds, other)
    before = other.read_bytes()
    for target in (other, Path(f"{other}-wal"), Path(f"{db_with_rounds}-journal")):
        result = chunkd_run("restore", "--db", db_with_rounds, "-o", target, cwd=cwd)
        assert result.returncode == 2, result
        assert not Path(f"{other}-wal").exists()
    assert other.read_bytes() == before


def test_ingest_db_applies_delta_from_the_config(workdir: Path, chunkd_run) -> None:
    (workdir / CONFIG).write_text('watch_root = "fl"\ndelta = true\n')
    db = workdir / "client_6_chunks.db"
    for round_num in (1, 2, 3):
        path = workdir / f"model_round_{round_num}.pth"
        save(path, round_num, changed=50_000)  # a quarter of the weights change each round
        result = chunkd_run("ingest", path, "--client", "6", "--db", db, cwd=workdir)
        assert result.returncode == 0, result.stderr
    with sqlite3.connect(db) as conn:
        deltas = conn.execute("SELECT COUNT(*) FROM chunk_data WHERE base_hash IS NOT NULL")
        assert deltas.fetchone()[0] > 0
    (entry,) = json.loads(chunkd_run("list", "--db", db, "--json", cwd=workdir).stdout)["clients"]
    assert entry["disk_ratio"] > 1
    assert entry["dedup_ratio"] >= 1 and entry["compression_ratio"] >= 1
    assert entry["dedup_ratio"] * entry["compression_ratio"] == pytest.approx(
        entry["disk_ratio"], rel=1e-2
    )


def test_checkpoint_files_beside_the_database_are_reported(workdir: Path, chunkd_run) -> None:
    client_dir = workdir / "fl" / "client_8"
    client_dir.mkdir(parents=True)
    db = client_dir / "client_8_chunks.db"
    for round_num in (1, 2):
        save(client_dir / f"model_round_{round_num}.pth", round_num, elements=5000)
        result = chunkd_run(
            "ingest",
            client_dir / f"model_round_{round_num}.pth",
            "--client",
            "8",
            "--db",
            db,
            cwd=workdir,
        )
        assert result.returncode == 0, result.stderr
    (entry,) = json.loads(chunkd_run("list", "--db", db, "--json", cwd=workdir).stdout)["clients"]
    assert entry["files_on_disk"] == 2
    assert entry["files_on_disk_bytes"] == sum(p.stat().st_size for p in client_dir.glob("*.pth"))


def test_ingest_progress_is_silent_on_a_pipe(workdir: Path, chunkd_run) -> None:
    path = workdir / "model_round_1.pth"
    save(path, 1)
    result = chunkd_run("ingest", path, "--client", "1", "--db", workdir / "c.db", cwd=workdir)
    assert result.returncode == 0
    assert result.stderr == b""  # no bar, no carriage returns: stderr is a pipe here


def test_restore_draws_total_and_percent_on_a_terminal(db_with_rounds: Path) -> None:
    """stderr a pseudo-terminal: the bar appears, with the round's size and 100% at the end."""
    import pty
    import subprocess
    import sys

    cwd = db_with_rounds.parent
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("CHUNKD_CONFIG", None)
    out = cwd / "restored.pth"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "chunkd.cli.main",
            "restore",
            "--db",
            str(db_with_rounds),
            "-o",
            str(out),
            "--config",
            str(cwd / CONFIG),
        ],
        stdout=subprocess.PIPE,
        stderr=follower,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )
    os.close(follower)
    drawn = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(leader, 65536):
            drawn += chunk
    os.close(leader)
    assert proc.returncode == 0
    text = drawn.decode(errors="replace")
    assert "restore" in text and "100%" in text and " / " in text
    assert text.rstrip(" ").endswith("\x1b[K")  # the line is cleared when done
