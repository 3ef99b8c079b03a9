"""The install sequence, run for real into a staging root (issue 10 item 6, issue 9 item 2).

``make install DESTDIR=<root> PREFIX=/usr``, then what the README tells an operator to run, each
with ``--root``: ``systemd-sysusers`` (creates user and group chunkd), ``systemd-tmpfiles
--create`` (the tenant layout), ``systemd-analyze verify`` of the installed unit (its ExecStart
must exist in the root, as pip puts it there). systemd need not be PID 1 for any of this.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
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
    chunkd_gid = _gid_in_root(root, "chunkd")

    # systemd-tmpfiles: /srv/fl is root's and not writable by tenants; /etc/chunkd 0750 chunkd
    run(tool("systemd-tmpfiles"), f"--root={root}", "--create")
    srv = (root / "srv/fl").stat()
    assert stat.S_IMODE(srv.st_mode) == 0o755 and (srv.st_uid, srv.st_gid) == (0, 0)
    etc = (root / "etc/chunkd").stat()
    assert stat.S_IMODE(etc.st_mode) == 0o750 and etc.st_gid == chunkd_gid
    config = root / "etc/chunkd/chunkd.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640

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
    assert settings.socket_group == "chunkd"
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
