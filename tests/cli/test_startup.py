"""``chunkd serve`` start-up failures (issue 10, item 5): one JSON line naming the config key,
exit 78 when the configuration is the cause, a missing configured ``watch_root`` included
(issue 21). Real processes, real files, real sockets."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def write_config(path: Path, **keys: str) -> Path:
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))
    return path


def only_json_line(stderr: bytes) -> dict[str, object]:
    """stderr holds exactly one line, and it is a JSON object (`journalctl | jq` keeps working)."""
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, stderr.decode()
    document = json.loads(lines[0])
    assert isinstance(document, dict)
    assert {"timestamp", "level", "event", "key", "error", "exit_status"} <= set(document)
    return document


@pytest.fixture
def serve(chunkd_run) -> Callable[[Path, Path], subprocess.CompletedProcess[bytes]]:
    return lambda config, cwd: chunkd_run("serve", "--config", config, cwd=cwd, timeout_s=60)


def test_watch_root_under_a_regular_file_exits_78_naming_the_key(serve, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a directory")
    config = write_config(
        tmp_path / "c.toml", watch_root=str(tmp_path / "plain" / "fl"), socket="run/c.sock"
    )
    result = serve(config, tmp_path)
    assert result.returncode == 78
    line = only_json_line(result.stderr)
    assert line["key"] == "watch_root"
    assert line["event"] == "config.invalid"
    assert line["exit_status"] == 78
    assert "Not a directory" in str(line["error"])
    assert not (tmp_path / "run" / "c.sock").exists()  # the socket bound first was removed


def test_socket_under_a_regular_file_exits_78_naming_the_key(serve, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    config = write_config(
        tmp_path / "c.toml", watch_root="fl", socket=str(tmp_path / "plain" / "c.sock")
    )
    result = serve(config, tmp_path)
    assert result.returncode == 78
    assert only_json_line(result.stderr)["key"] == "socket"


def test_explicit_client_dir_that_cannot_exist_exits_78(serve, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    config = tmp_path / "c.toml"
    config.write_text(
        'watch_root = "fl"\nsocket = "run/c.sock"\n'
        f'[[clients]]\nid = "7"\ndir = "{tmp_path / "plain" / "site7"}"\n'
    )
    (tmp_path / "fl").mkdir()
    result = serve(config, tmp_path)
    assert result.returncode == 78
    assert only_json_line(result.stderr)["key"] == "clients[0].dir"


@pytest.mark.parametrize(
    ("text", "key"),
    [("chunk_nmu = 3\n", "chunk_nmu"), ("chunk_num = 0\n", "chunk_num")],
)
def test_invalid_config_is_the_same_json_line(serve, tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    result = serve(config, tmp_path)
    assert result.returncode == 78
    line = only_json_line(result.stderr)
    assert line["key"] == key
    assert key in str(line["error"])


def test_second_daemon_exits_7_with_one_json_line(serve, make_daemon, tmp_path: Path) -> None:
    first = make_daemon()
    result = serve(first.config, tmp_path)
    assert result.returncode == 7  # busy: not a config error, a later restart may succeed
    line = only_json_line(result.stderr)
    assert line["event"] == "daemon.failed"
    assert line["key"] == "socket"
    assert first.proc.poll() is None


def test_missing_watch_root_refuses_to_start_naming_key_and_path(make_daemon) -> None:
    """Issue 21: a configured watch_root is never invented (tests/daemon/test_watch_root.py)."""
    daemon = make_daemon(start=False)
    daemon.watch_root.rmdir()
    daemon.start(wait_ready=False)
    assert daemon.proc.wait(timeout=60) == 78
    failed = [e for e in daemon.events() if e.get("key") == "watch_root"]
    assert failed and str(daemon.watch_root) in str(failed[0]["error"])
    assert not daemon.watch_root.exists()


def test_existing_watch_root_gives_no_warning(make_daemon) -> None:
    daemon = make_daemon()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not daemon.events():
        time.sleep(0.1)
    assert not [e for e in daemon.events() if e["event"] == "watch_root.missing"]
    assert json.loads(daemon.cli("status", "--json").stdout)["warnings"] == []
