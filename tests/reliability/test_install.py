"""The install sequence, run for real into a staging root (issue 10 item 6, issue 9 item 2).

``make install DESTDIR=<root> PREFIX=/usr``, then what the README tells an operator to run, each
with ``--root``: ``systemd-sysusers`` (creates user and group chunkd), ``systemd-tmpfiles
--create`` (the tenant layout), ``systemd-analyze verify`` of the installed unit (its ExecStart
must exist in the root, as pip puts it there). systemd need not be PID 1 for any of this.

Then the installed service is run as what the unit makes it, user and group chunkd (issue 17,
finding 9: the config was root:root 0640 and the daemon exited 78 "Permission denied").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkd.config import load_settings

pytestmark = pytest.mark.slow

TOP = Path(__file__).resolve().parents[2]
#: Units every OS root has and ``systemd-analyze verify --root`` resolves the unit against.
BASE_UNITS = (
    "sysinit.target",
    "basic.target",
    "multi-user.target",
    "local-fs.target",
    "shutdown.target",
    "sockets.target",
    "paths.target",
    "timers.target",
    "slices.target",
    "system.slice",
    "-.slice",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
)


def run(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} (systemd) is needed to check the install")
    return path


def _gid_in_root(root: Path, group: str) -> int:
    for line in (root / "etc" / "group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return int(fields[2])
    raise AssertionError(f"no group {group} in {root}/etc/group")


def _members_in_root(root: Path, group: str) -> set[str]:
    for line in (root / "etc" / "group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return {m for m in fields[3].split(",") if m}
    raise AssertionError(f"no group {group} in {root}/etc/group")


def _ids_in_root(root: Path, user: str) -> tuple[int, int]:
    """``user``'s uid and primary gid in the root's /etc/passwd (systemd-sysusers wrote it)."""
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"no user {user} in {root}/etc/passwd")


def _owner_and_mode(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    if os.geteuid() != 0:  # CI runs as root; systemd-tmpfiles --root must chown to root:root
        pytest.skip("needs root: systemd-tmpfiles --root creates root-owned directories")
    root = tmp_path / "root"
    run("make", "-C", TOP, "--no-print-directory", "install", f"DESTDIR={root}", "PREFIX=/usr")
    return root


def test_install_sysusers_tmpfiles_verify(installed: Path) -> None:
    root = installed
    unit = root / "usr/lib/systemd/system/chunkd.service"
    text = unit.read_text()
    assert "ExecStart=/usr/bin/chunkd serve --config /etc/chunkd/chunkd.toml" in text
    documentation = next(
        line.split("=", 1)[1] for line in text.splitlines() if line.startswith("Documentation=")
    )
    assert documentation == "file:///usr/share/doc/chunkd/README.md"
    assert (root / documentation.removeprefix("file:///")).is_file()
    for name in ("PROTOCOL.md", "RELIABILITY.md", "chunkd.toml.example"):
        assert (root / "usr/share/doc/chunkd" / name).is_file()

    # systemd-sysusers: user and group chunkd, no login
    run(tool("systemd-sysusers"), f"--root={root}")
    passwd = (root / "etc/passwd").read_text()
    assert any(line.startswith("chunkd:") and "nologin" in line for line in passwd.splitlines())
    # and the socket's group chunkd-users, the daemon its only member until tenants are added
    users_gid = _gid_in_root(root, "chunkd-users")
    assert _members_in_root(root, "chunkd-users") == {"chunkd"}
    assert _members_in_root(root, "chunkd") == set()  # it reads every client directory

    # systemd-tmpfiles: /srv/fl is root's and not writable by tenants; /etc/chunkd 0750
    run(tool("systemd-tmpfiles"), f"--root={root}", "--create")
    srv = (root / "srv/fl").stat()
    assert stat.S_IMODE(srv.st_mode) == 0o755 and (srv.st_uid, srv.st_gid) == (0, 0)
    etc = (root / "etc/chunkd").stat()
    assert stat.S_IMODE(etc.st_mode) == 0o750 and etc.st_gid == users_gid
    config = root / "etc/chunkd/chunkd.toml"
    assert _owner_and_mode(config) == (0, users_gid, 0o640)  # the service and the socket's users

    # systemd-analyze verify against the root: the console script must be where ExecStart says
    units = root / "usr/lib/systemd/system"
    for name in BASE_UNITS:
        host = Path("/usr/lib/systemd/system") / name
        if host.exists():
            shutil.copy(host, units / name)
    verify = tool("systemd-analyze")
    missing = subprocess.run(
        [verify, "verify", f"--root={root}", "--man=no", "chunkd.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode != 0 and "/usr/bin/chunkd" in missing.stderr
    script = root / "usr/bin/chunkd"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text('#!/bin/sh\nexec python3 -m chunkd.cli.main "$@"\n')
    script.chmod(0o755)
    done = run(verify, "verify", f"--root={root}", "--man=no", "chunkd.service")
    assert "chunkd.service" not in done.stdout + done.stderr


def test_installed_config_is_the_tenant_layout(installed: Path) -> None:
    settings = load_settings(installed / "etc/chunkd/chunkd.toml")
    db = settings.db_path_for("alice", Path("/srv/fl/client_alice"))
    assert db == Path("/var/lib/chunkd/alice/client_alice_chunks.db")
    assert settings.socket == Path("/run/chunkd/chunkd.sock")
    assert settings.socket_group == "chunkd-users"  # never chunkd, which reads every client dir
    assert settings.allowed_uids == () and settings.allowed_gids == ()
    unit = (installed / "usr/lib/systemd/system/chunkd.service").read_text()
    assert "StateDirectory=chunkd" in unit and "UMask=0077" in unit


def test_reinstall_keeps_an_edited_config(installed: Path) -> None:
    config = installed / "etc/chunkd/chunkd.toml"
    config.write_text(config.read_text() + "\nallowed_uids = [1000]\n")
    edited = config.read_text()
    run("sh", TOP / "systemd/install.sh", DESTDIR=str(installed), PREFIX="/usr")
    assert config.read_text() == edited
    assert (installed / "etc/chunkd/chunkd.toml.new").is_file()


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A directory another uid can traverse (pytest's ``tmp_path`` has 0700 parents)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: runs the installed service as its own uid (setpriv)")
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to run the service as user chunkd")
    for needed in (TOP, Path(sys.prefix)):
        closed = [d for d in (needed, *needed.parents) if not d.stat().st_mode & 0o001]
        if closed:
            pytest.fail(
                f"{closed[-1]} (mode {closed[-1].stat().st_mode & 0o777:o}) keeps other users out"
                f" of {needed}: this test runs the daemon as user chunkd from this checkout and its"
                " virtualenv; clone into a directory other users can traverse"
            )
    base = Path(tempfile.mkdtemp(prefix="chunkd-install-"))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _wait_for(log: Path, proc: subprocess.Popen[bytes], event: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                if json.loads(line).get("event") == event:
                    return
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"no {event} within {timeout_s}s:\n{log.read_text()}")


def test_installed_service_runs_as_its_own_user(shared_root: Path) -> None:
    """``make install``, sysusers, tmpfiles; then ``chunkd serve`` as user and group chunkd with
    the installed config starts, ingests a torch.save checkpoint, and restores it byte-identical.
    """
    import torch

    base = shared_root
    root = base / "root"
    run("make", "-C", TOP, "--no-print-directory", "install", f"DESTDIR={root}", "PREFIX=/usr")
    run(tool("systemd-sysusers"), f"--root={root}")
    run(tool("systemd-tmpfiles"), f"--root={root}", "--create")
    uid, gid = _ids_in_root(root, "chunkd")
    users_gid = _gid_in_root(root, "chunkd-users")
    config = root / "etc/chunkd/chunkd.toml"
    installed_as = _owner_and_mode(config)

    # What the unit's StateDirectory= and RuntimeDirectory= make, and one tenant directory.
    state, runtime = base / "var/lib/chunkd", base / "run/chunkd"
    client_dir = base / "srv/fl/client_alice"
    for directory, owner, mode in (
        (state, uid, 0o700),
        (runtime, uid, 0o711),
        (client_dir, 0, 0o2750),
    ):
        directory.mkdir(parents=True)
        os.chown(directory, owner, gid)
        directory.chmod(mode)
    # Point the installed config's paths there, rewriting it in place: the file keeps the owner
    # and mode the install gave it. The host has no group named chunkd: the socket's group by id.
    text = config.read_text()
    for old, new in (
        ('watch_root = "/srv/fl"', f'watch_root = "{base}/srv/fl"'),
        ('"/var/lib/chunkd/{client}/', f'"{state}/{{client}}/'),
        ('socket = "/run/chunkd/chunkd.sock"', f'socket = "{runtime}/chunkd.sock"'),
        ('socket_group = "chunkd-users"', f'socket_group = "{users_gid}"'),
    ):
        assert old in text, old
        text = text.replace(old, new)
    with open(config, "r+") as f:
        f.write(text)
        f.truncate()
    assert _owner_and_mode(config) == installed_as

    log = base / "daemon.log"
    env = {k: v for k, v in os.environ.items() if k not in {"CHUNKD_CONFIG", "NOTIFY_SOCKET"}}
    env["PYTHONPATH"] = str(TOP)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={gid}",
                f"--groups={users_gid}",  # sysusers' "m chunkd chunkd-users"
                "--",
                sys.executable,
                "-m",
                "chunkd.cli.main",
                "serve",
                "--config",
                str(config),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=base,
            env=env,
        )
    try:
        _wait_for(log, proc, "daemon.ready")
        checkpoint = client_dir / "model_round_1.pth"
        generator = torch.Generator().manual_seed(17)
        torch.save({"fc.weight": torch.randn(64, 64, generator=generator)}, checkpoint)
        _wait_for(log, proc, "checkpoint.ingested")
        restored = base / "restored.pth"
        done = run(
            sys.executable,
            "-m",
            "chunkd.cli.main",
            "restore",
            "--client",
            "alice",
            "--socket",
            runtime / "chunkd.sock",
            "-o",
            restored,
            PYTHONPATH=str(TOP),
        )
        assert restored.read_bytes() == checkpoint.read_bytes(), done.stdout
        assert next(state.glob("alice/*.db")).stat().st_uid == uid  # the service wrote it
        assert installed_as == (0, users_gid, 0o640)  # readable by the service and its users
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_install_after_sysusers_gives_the_config_to_the_socket_group(installed: Path) -> None:
    """Where group chunkd-users already exists (a reinstall), install.sh sets the group itself."""
    run(tool("systemd-sysusers"), f"--root={installed}")
    gid = _gid_in_root(installed, "chunkd-users")
    (installed / "etc/chunkd/chunkd.toml").unlink()
    run("sh", TOP / "systemd/install.sh", DESTDIR=str(installed), PREFIX="/usr")
    config = installed / "etc/chunkd/chunkd.toml"
    assert _owner_and_mode(config) == (0, gid, 0o640)
    assert _owner_and_mode(config.parent) == (0, gid, 0o750)
