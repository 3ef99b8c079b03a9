"""A configured ``watch_root`` is never invented (issue 21, friction 1); the built-in defaults'
is (the quick start), and a ``[[clients]]`` directory that does not exist yet is waited for, not
created. Real ``chunkd serve`` processes, real directories, real inotify."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chunkd.config import load_settings
from tests.daemon.checkpoints import restored_bytes, save_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def serve(config: Path | None, cwd: Path, timeout_s: float = 60) -> subprocess.CompletedProcess:
    args = ["serve"] if config is None else ["serve", "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if k not in {"CHUNKD_CONFIG", "NOTIFY_SOCKET"}}
    env.update(CHUNKD_HOME=str(cwd / "home"), PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", *args],
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=timeout_s,
        check=False,
    )


def test_missing_configured_watch_root_refuses_to_start_and_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "srv" / "fl-tpyo"
    config = tmp_path / "c.toml"
    config.write_text(f'watch_root = "{typo}"\nsocket = "run/c.sock"\nlog_format = "json"\n')
    result = serve(config, tmp_path)
    assert result.returncode == 78, result.stderr
    line = json.loads(result.stderr.decode().splitlines()[-1])
    assert line["event"] == "config.invalid" and line["key"] == "watch_root"
    assert str(typo) in str(line["error"]) and "does not exist" in str(line["error"])
    assert not (tmp_path / "srv").exists()  # neither the root nor any parent was invented
    assert not (tmp_path / "run" / "c.sock").exists()
    assert list((tmp_path / "run").iterdir()) == []  # no socket, no lock file left behind


def test_only_the_builtin_defaults_may_create_their_watch_root(tmp_path: Path) -> None:
    """A config file that omits ``watch_root`` gets SPEC's ``/srv/fl``, which the install
    creates (tmpfiles.d); the daemon must not. (Checked on Settings: a daemon run here as root
    would otherwise be the one to create /srv/fl on the host.)"""
    config = tmp_path / "c.toml"
    config.write_text('socket = "run/c.sock"\n')
    from_file = load_settings(config)
    assert from_file.watch_root == Path("/srv/fl") and not from_file.create_watch_root
    assert load_settings(None).create_watch_root


def test_builtin_defaults_create_their_watch_root(tmp_path: Path) -> None:
    """The quick start: ``chunkd serve`` with no config creates ``<data home>/fl`` and runs."""
    env = {k: v for k, v in os.environ.items() if k not in {"CHUNKD_CONFIG", "NOTIFY_SOCKET"}}
    home = tmp_path / "home"
    env.update(CHUNKD_HOME=str(home), PYTHONPATH=str(REPO))
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chunkd.cli.main", "serve", "--json"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while b'"daemon.ready"' not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert (home / "fl").is_dir()
        events = [json.loads(line) for line in log.read_text().splitlines()]
        created = [e for e in events if e["event"] == "watch_root.missing"]
        assert len(created) == 1 and created[0]["created"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_explicit_client_dir_is_waited_for_not_created(make_daemon, tmp_path: Path) -> None:
    """A ``[[clients]]`` directory whose job has not started: the daemon starts, says so in the
    log and in ``status``, does not create it, and takes the client once it appears."""
    site = tmp_path / "site7" / "checkpoints"
    daemon = make_daemon(start=False, rescan_interval="1s")
    with open(daemon.config, "a") as f:
        f.write(f'[[clients]]\nid = "7"\ndir = "{site}"\n')
    daemon.start()
    assert not site.parent.exists()
    warned = [e for e in daemon.events() if e["event"] == "client.added" and e.get("client") == "7"]
    assert warned and warned[0]["level"] == "warning" and str(site) in str(warned[0]["error"])
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert any(str(site) in w and "clients[0].dir" in w for w in status["warnings"])

    site.mkdir(parents=True)  # the job starts
    daemon.wait_event(lambda e: e["event"] == "client.added" and e.get("db"), timeout_s=30)
    content = save_model(site / "model_round_1.pth", 1)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", timeout_s=60)
    assert restored_bytes(site / "client_7_chunks.db", 1) == content
    assert json.loads(daemon.cli("status", "--json").stdout)["warnings"] == []
