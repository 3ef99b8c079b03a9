"""The ``chunkd`` command line as a user runs it: a subprocess, real files, no daemon.

The ``--db`` forms go straight to a database built here with ``ingest_file`` from ``torch.save``
files; the daemon forms are only checked for what happens when no daemon answers (exit 8 and a
message pointing at ``--db``). The lead's end-to-end tests cover the daemon forms.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chunkd.ingest import IngestOptions, ingest_file
from chunkd.store import ChunkStore

OPTIONS = IngestOptions(chunk_num=4, max_chunk_bytes=256 << 10)


def save_model(path: Path, seed: int, elements: int = 3000) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {
        "fc.weight": torch.randn(elements, generator=generator),
        "fc.bias": torch.randn(8, generator=generator).to(torch.bfloat16),
        "bn.num_batches_tracked": torch.tensor(seed),
    }
    torch.save({"cur_round": seed, "model": state}, path)
    return state


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``client_1_chunks.db`` with rounds 1, 2 and a 2 MB round 3; the .pth files beside it."""
    root = tmp_path_factory.mktemp("cli")
    db = root / "client_1_chunks.db"
    with ChunkStore.open_writer(db) as store:
        for round_num, elements in ((1, 3000), (2, 3000), (3, 500_000)):
            path = root / f"model_round_{round_num}.pth"
            save_model(path, round_num, elements)
            ingest_file(path, store, OPTIONS)
    return root


@pytest.fixture
def db_copy(stored: Path, tmp_path: Path) -> Path:
    """A copy of the stored database that a test may change."""
    shutil.copy(stored / "client_1_chunks.db", tmp_path / "client_1_chunks.db")
    return tmp_path / "client_1_chunks.db"


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"CHUNKD_CONFIG", "NOTIFY_SOCKET"}}
    env["CHUNKD_HOME"] = str(home)  # the built-in defaults point here, not at the user's home
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def chunkd(*args: str | Path, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", *map(str, args)],
        capture_output=True,
        input=stdin,
        cwd=cwd,
        env=environment(cwd),
        timeout=120,
        check=False,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.count("\n") == 1 and text.endswith("\n"), text
    return text


# -- restore -------------------------------------------------------------------------------------


def test_restore_to_a_file_is_byte_identical(stored: Path, tmp_path: Path):
    out = tmp_path / "restored.pth"
    db = stored / "client_1_chunks.db"
    result = chunkd("restore", "--client", "1", "--round", "2", "--db", db, "-o", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sha256(out) == sha256(stored / "model_round_2.pth")
    assert b"round 2" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["restored.pth"]  # no .partial left


def test_restore_latest_with_json(stored: Path, tmp_path: Path):
    out = tmp_path / "latest.pth"
    result = chunkd(
        "restore",
        "--client",
        "1",
        "--db",
        stored / "client_1_chunks.db",
        "-o",
        out,
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["round"] == 3 and document["sha256"] == sha256(out)
    assert sha256(out) == sha256(stored / "model_round_3.pth")


def test_restore_to_stdout_piped_into_sha256sum(stored: Path, tmp_path: Path):
    restore = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chunkd.cli.main",
            "restore",
            "--client",
            "1",
            "--round",
            "3",
            "--db",
            str(stored / "client_1_chunks.db"),
            "-o",
            "-",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=environment(tmp_path),
    )
    digest = subprocess.run(["sha256sum"], stdin=restore.stdout, capture_output=True, check=True)
    assert restore.stdout is not None and restore.stderr is not None
    restore.stdout.close()
    assert restore.wait(timeout=60) == 0, restore.stderr.read()
    restore.stderr.close()
    assert digest.stdout.split()[0].decode() == sha256(stored / "model_round_3.pth")


def test_restore_into_a_pipe_closed_early_exits_quietly(stored: Path, tmp_path: Path):
    restore = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chunkd.cli.main",
            "restore",
            "--client",
            "1",
            "--round",
            "3",
            "--db",
            str(stored / "client_1_chunks.db"),
            "-o",
            "-",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=environment(tmp_path),
    )
    assert restore.stdout is not None and restore.stderr is not None
    assert len(restore.stdout.read(100)) == 100
    restore.stdout.close()  # like `| head -c 100`
    assert restore.wait(timeout=60) == 141
    assert restore.stderr.read() == b""
    restore.stderr.close()


def test_a_damaged_round_leaves_no_output(db_copy: Path, tmp_path: Path):
    with sqlite3.connect(db_copy) as conn:
        conn.execute(
            "UPDATE chunk_data SET data = zeroblob(length(data)) WHERE chunk_hash IN"
            " (SELECT chunk_hash FROM chunk_metadata WHERE round_num = 2 AND chunk_id = 0)"
        )
    out = tmp_path / "out" / "r2.pth"
    out.parent.mkdir()
    result = chunkd(
        "restore", "--client", "1", "--round", "2", "--db", db_copy, "-o", out, cwd=tmp_path
    )
    assert result.returncode == 5
    assert "round 2 chunk 0" in one_line(result.stderr)
    assert list(out.parent.iterdir()) == []


# -- list, verify, prune, ingest, export ---------------------------------------------------------


def test_list(stored: Path, tmp_path: Path):
    db = stored / "client_1_chunks.db"
    human = chunkd("list", "--db", db, "--client", "1", cwd=tmp_path)
    assert human.returncode == 0, human.stderr
    text = human.stdout.decode()
    assert "client 1: 3 rounds" in text and "ROUND" in text and "dedup" in text
    assert "MiB" in text or "KiB" in text
    document = json.loads(chunkd("list", "--db", db, "--json", cwd=tmp_path).stdout)
    rounds = document["clients"][0]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[0]["sha256"] == sha256(stored / "model_round_1.pth")


def test_verify_clean_then_corrupted(db_copy: Path, tmp_path: Path):
    clean = chunkd("verify", "--db", db_copy, "--client", "1", cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert b"OK" in clean.stdout
    with sqlite3.connect(db_copy) as conn:
        conn.execute(
            "UPDATE chunk_data SET data = zeroblob(length(data)) WHERE chunk_hash IN"
            " (SELECT chunk_hash FROM chunk_metadata WHERE round_num = 1 AND chunk_id = 2)"
        )
    broken = chunkd("verify", "--db", db_copy, "--client", "1", cwd=tmp_path)
    assert broken.returncode == 5
    assert "round 1 chunk 2" in broken.stdout.decode()
    assert "problem" in one_line(broken.stderr)
    document = json.loads(chunkd("verify", "--db", db_copy, "--json", cwd=tmp_path).stdout)
    assert document["ok"] is False
    assert (
        document["clients"][0]["problems"][0]["round"],
        document["clients"][0]["problems"][0]["chunk_id"],
    ) == (1, 2)


def test_prune_dry_run_then_for_real(db_copy: Path, tmp_path: Path):
    dry = chunkd("prune", "--db", db_copy, "--keep", "1", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert b"would remove rounds 1, 2" in dry.stdout
    with ChunkStore.open_reader(db_copy) as store:
        assert store.round_numbers() == [1, 2, 3]
    done = chunkd("prune", "--db", db_copy, "--keep", "1", "--json", cwd=tmp_path)
    assert json.loads(done.stdout)["clients"][0]["rounds_removed"] == [1, 2]
    with ChunkStore.open_reader(db_copy) as store:
        assert store.round_numbers() == [3]


def test_ingest_into_a_new_database(stored: Path, tmp_path: Path):
    db = tmp_path / "client_9_chunks.db"
    checkpoint = stored / "model_round_2.pth"
    first = chunkd("ingest", checkpoint, "--client", "9", "--db", db, "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    document = json.loads(first.stdout)
    assert (document["outcome"], document["round"]) == ("ingested", 2)
    again = chunkd("ingest", checkpoint, "--client", "9", "--db", db, "--round", "5", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert b"round 5" in again.stdout
    with ChunkStore.open_reader(db) as store:
        assert store.round_numbers() == [2, 5]


def test_ingest_rejects_a_file_that_is_not_a_checkpoint(tmp_path: Path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a zip at all")
    result = chunkd("ingest", junk, "--client", "1", "--db", tmp_path / "c.db", cwd=tmp_path)
    assert result.returncode == 4
    one_line(result.stderr)


def test_export_safetensors_equals_the_original_tensors(stored: Path, tmp_path: Path):
    from safetensors.torch import load_file

    out = tmp_path / "round2.safetensors"
    result = chunkd(
        "export",
        "--client",
        "1",
        "--round",
        "2",
        "--format",
        "safetensors",
        "--db",
        stored / "client_1_chunks.db",
        "-o",
        out,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    original = torch.load(stored / "model_round_2.pth", weights_only=True)["model"]
    loaded = load_file(out)
    assert loaded.keys() == {f"model.{name}" for name in original}
    for name, tensor in original.items():
        assert loaded[f"model.{name}"].dtype == tensor.dtype
        assert torch.equal(loaded[f"model.{name}"], tensor)
    assert out.stat().st_mode & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- usage errors and a missing daemon -----------------------------------------------------------

USAGE_ERRORS = {
    "no command": [],
    "unknown command": ["frobnicate"],
    "missing --client": ["restore", "-o", "x.pth"],
    "traversal client": ["restore", "--client", "../../etc", "--db", "x.db"],
    "negative round": ["restore", "--client", "1", "--round", "-1", "--db", "x.db"],
    "word round": ["restore", "--client", "1", "--round", "five", "--db", "x.db"],
    "bad format": ["export", "--client", "1", "--format", "onnx", "-o", "x"],
    "json to stdout": ["restore", "--client", "1", "--db", "x.db", "-o", "-", "--json"],
    "prune --keep without --db": ["prune", "--keep", "3"],
    "export without --client": ["export", "--format", "safetensors", "-o", "x"],
}


@pytest.mark.parametrize("args", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_bad_arguments_exit_2_with_one_line(args: list[str], tmp_path: Path):
    result = chunkd(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result.stderr).startswith("chunkd")
    assert result.stdout == b""


def test_no_daemon_exits_8_and_points_to_db(tmp_path: Path):
    socket_path = tmp_path / "nobody.sock"
    result = chunkd(
        "restore", "--client", "1", "-o", tmp_path / "x.pth", "--socket", socket_path, cwd=tmp_path
    )
    assert result.returncode == 8
    message = one_line(result.stderr)
    assert str(socket_path) in message and "--db" in message
    assert list(tmp_path.iterdir()) == []  # the temporary output was removed


def test_the_socket_comes_from_the_config(tmp_path: Path):
    config = tmp_path / "chunkd.toml"
    config.write_text('socket = "run/other.sock"\nwatch_root = "fl"\n')
    result = chunkd("status", "--config", config, cwd=tmp_path)
    assert result.returncode == 8
    assert str(tmp_path / "run" / "other.sock") in one_line(result.stderr)
    broken = tmp_path / "broken.toml"
    broken.write_text("chunk_num = 0\n")
    assert chunkd("list", "--config", broken, cwd=tmp_path).returncode == 78
