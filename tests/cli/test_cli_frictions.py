"""What a new operator still tripped on (issue 21, frictions 2, 3, 4, 5 and 11), each as the
command that showed it: an unknown client is told the ids that exist, ``ingest`` from outside a
client directory points to ``--db``, ``ingest --db`` needs no ``--client``, ``export`` defaults to
its only format and takes ``--generation``, a restored earlier version says so, and "no daemon
answers" names the socket tried and how to pick another."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
from checkpoints import save_model  # tests/daemon's builder: one definition

sys.path.pop(0)


def ingested(daemon, client: str, count: int) -> None:
    daemon.wait_event(
        lambda e: e["event"] == "checkpoint.ingested" and e.get("client") == client,
        count=count,
        timeout_s=60,
    )


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.count("\n") == 1, text
    return text


def tensors_of(checkpoint: bytes) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(checkpoint), weights_only=True)


def assert_same_tensors(safetensors_file: Path, checkpoint: bytes) -> None:
    from safetensors.torch import load_file

    loaded, original = load_file(safetensors_file), tensors_of(checkpoint)
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[name], original[name]) for name in original)


@pytest.fixture
def rewritten(make_daemon):
    """A daemon whose client 1 has round 1 rewritten once: (daemon, first bytes, second bytes)."""
    daemon = make_daemon()
    path = daemon.watch_root / "client_1" / "model_round_1.pth"
    first = save_model(path, 1)
    ingested(daemon, "1", 1)
    second = save_model(path, 2)
    daemon.wait_event(lambda e: e["event"] == "round.replaced", timeout_s=60)
    return daemon, first, second


# -- 2: an unknown client is told which ids exist ------------------------------------------------


def test_unknown_client_lists_the_known_ids_bounded(make_daemon, tmp_path: Path) -> None:
    daemon = make_daemon(start=False)
    for n in range(1, 24):  # 23 clients: the first 20 in numeric order, then "and 3 more"
        (daemon.watch_root / f"client_{n}").mkdir()
    daemon.start()
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert status["clients_watched"] == 23
    for argv in (
        ["restore", "--client", "99", "-o", str(tmp_path / "x.pth")],
        ["export", "--client", "99", "-o", str(tmp_path / "x.safetensors")],
        ["list", "--client", "99"],
    ):
        result = daemon.cli(*argv)
        assert result.returncode == 3, (argv, result.stderr)  # not_found, as before
        message = one_line(result.stderr)
        shown = ", ".join(str(n) for n in range(1, 21))
        assert f"no client '99' is watched by this daemon; known clients: {shown} (and 3 more)" in (
            message
        ), message
    assert not (tmp_path / "x.pth").exists()


# -- 3: ingest from outside a client directory ---------------------------------------------------


def test_ingest_outside_the_client_directory_points_to_db(make_daemon, tmp_path: Path) -> None:
    daemon = make_daemon()
    (daemon.watch_root / "client_1").mkdir()
    outside = tmp_path / "elsewhere" / "model_round_1.pth"
    save_model(outside, 1)
    result = daemon.cli("ingest", str(outside), "--client", "1")
    assert result.returncode == 6, result.stderr  # forbidden, as before
    message = one_line(result.stderr)
    assert str(daemon.watch_root / "client_1") in message
    assert "--db" in message and "chunkd ingest" in message


def test_ingest_without_client_or_db_says_both_ways(make_daemon, tmp_path: Path) -> None:
    daemon = make_daemon()
    path = tmp_path / "model_round_1.pth"
    save_model(path, 1)
    result = daemon.cli("ingest", str(path))
    assert result.returncode == 2
    message = one_line(result.stderr)
    assert "--client" in message and "--db" in message


# -- 4: ingest --db without --client; export's default format and --generation -----------------


def test_ingest_db_takes_the_client_from_the_database_name(chunkd_run, tmp_path: Path) -> None:
    path = tmp_path / "model_round_3.pth"
    save_model(path, 3)
    db = tmp_path / "client_7_chunks.db"
    result = chunkd_run("ingest", path, "--db", db, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["client"] == "7" and document["round"] == 3
    restored = tmp_path / "back.pth"
    back = chunkd_run("restore", "--db", db, "-o", restored, cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    assert restored.read_bytes() == path.read_bytes()


def test_export_db_defaults_to_safetensors_and_takes_a_generation(
    chunkd_run, tmp_path: Path
) -> None:
    path = tmp_path / "model_round_1.pth"
    db = tmp_path / "client_5_chunks.db"
    first = save_model(path, 1)
    assert chunkd_run("ingest", path, "--db", db, cwd=tmp_path).returncode == 0
    second = save_model(path, 2)  # the same path rewritten: round 1, generation 1
    assert chunkd_run("ingest", path, "--db", db, cwd=tmp_path).returncode == 0
    now, then = tmp_path / "now.safetensors", tmp_path / "then.safetensors"
    current = chunkd_run("export", "--db", db, "-o", now, cwd=tmp_path)
    assert current.returncode == 0, current.stderr
    assert_same_tensors(now, second)
    earlier = chunkd_run(
        "export", "--db", db, "--generation", "0", "-o", then, "--json", cwd=tmp_path
    )
    assert earlier.returncode == 0, earlier.stderr
    assert_same_tensors(then, first)
    document = json.loads(earlier.stdout)
    assert (document["round"], document["generation"], document["format"]) == (1, 0, "safetensors")
    gone = chunkd_run("export", "--db", db, "--generation", "7", "-o", then, cwd=tmp_path)
    assert gone.returncode == 3, gone.stderr


def test_export_through_the_daemon_takes_a_generation(rewritten, tmp_path: Path) -> None:
    daemon, first, second = rewritten
    now, then = tmp_path / "now.safetensors", tmp_path / "then.safetensors"
    current = daemon.cli("export", "--client", "1", "-o", str(now))
    assert current.returncode == 0, current.stderr
    assert_same_tensors(now, second)
    for transfer in ("fd", "frames"):
        earlier = daemon.cli(
            "export", "--client", "1", "--round", "1", "--generation", "0", "-o", str(then),
            "--transfer", transfer,
        )  # fmt: skip
        assert earlier.returncode == 0, earlier.stderr
        assert_same_tensors(then, first)
        assert b"generation 0 (an earlier version" in earlier.stdout, earlier.stdout


# -- 5: a restored earlier version says so ------------------------------------------------------


def test_restore_of_an_earlier_generation_names_it(rewritten, tmp_path: Path) -> None:
    daemon, first, second = rewritten
    out = tmp_path / "then.pth"
    for transfer in ("fd", "frames"):
        result = daemon.cli(
            "restore", "--client", "1", "--generation", "0", "-o", str(out), "--transfer", transfer
        )
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == first
        line = result.stdout.decode()
        assert "round 1 generation 0 (an earlier version; the current one is generation 1)" in line
    current = daemon.cli("restore", "--client", "1", "--generation", "1", "-o", str(out))
    assert b"round 1 generation 1 (the current version)" in current.stdout, current.stdout
    plain = daemon.cli("restore", "--client", "1", "-o", str(out))
    assert out.read_bytes() == second and b"generation" not in plain.stdout


def test_restore_db_of_an_earlier_generation_names_it(chunkd_run, tmp_path: Path) -> None:
    path = tmp_path / "model_round_6.pth"
    db = tmp_path / "client_2_chunks.db"
    first = save_model(path, 1)
    assert chunkd_run("ingest", path, "--db", db, cwd=tmp_path).returncode == 0
    save_model(path, 2)
    assert chunkd_run("ingest", path, "--db", db, cwd=tmp_path).returncode == 0
    out = tmp_path / "then.pth"
    result = chunkd_run("restore", "--db", db, "--generation", "0", "-o", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(first).digest()
    line = result.stdout.decode()
    assert (
        "client 2 round 6 generation 0 (an earlier version; the current one is generation 1)"
        in (line)
    ), line


def test_replica_restore_refuses_a_generation(chunkd_run, tmp_path: Path) -> None:
    """The replica keeps current versions only: ``--generation`` must not be ignored there."""
    out = tmp_path / "x.pth"
    result = chunkd_run(
        "restore", "--replica", "s3://b/p", "--client", "1", "--generation", "0", "-o", out,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--generation" in one_line(result.stderr) and not out.exists()


# -- 11: "no daemon answers" names the socket and how to pick another ---------------------------


@pytest.mark.parametrize("argv", [["list"], ["status"], ["list", "--client", "1"]])
def test_no_daemon_names_the_socket_and_the_options(argv, chunkd_run, tmp_path: Path) -> None:
    socket_path = tmp_path / "run" / "nobody.sock"
    result = chunkd_run(*argv, "--socket", socket_path, cwd=tmp_path)
    assert result.returncode == 8
    message = one_line(result.stderr)
    assert f"at {socket_path}" in message
    assert "--socket" in message and "--config" in message
    assert "restore --db" not in message


def test_no_daemon_from_the_config_names_its_socket(chunkd_run, tmp_path: Path) -> None:
    config = tmp_path / "chunkd.toml"
    config.write_text('watch_root = "fl"\nsocket = "run/other.sock"\n')
    result = chunkd_run("status", "--config", config, cwd=tmp_path)
    assert result.returncode == 8
    message = one_line(result.stderr)
    assert str(tmp_path / "run" / "other.sock") in message and "--config" in message


def test_unknown_client_message_is_natural_order_and_bounded() -> None:
    from chunkd.restore import unknown_client_message

    ids = [str(n) for n in range(30, 0, -1)] + ["b", "a"]
    message = unknown_client_message("x", ids, "here")
    assert message == (
        "no client 'x' here; known clients: " + ", ".join(map(str, range(1, 21))) + " (and 12 more)"
    )
    assert unknown_client_message("x", ["b", "10", "9"], "here", "yours") == (
        "no client 'x' here; yours: 9, 10, b"
    )
    assert unknown_client_message("x", [], "here").endswith("known clients: none")
