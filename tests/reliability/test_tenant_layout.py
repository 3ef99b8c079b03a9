"""The documented tenant layout isolates tenants on disk, with real accounts (issue 19).

Real users and groups (``useradd``, ``groupadd``), made for the test and removed after it: the
daemon's account, its socket group and two tenants, alice and bob. ``chunkd tenant add`` sets
them up exactly as the README says; alice starts in the daemon's group, as the layout before
issue 19 put every tenant, and the command takes her out. Then the daemon runs as its own
account (``setpriv --init-groups``: the groups /etc/group gives it), each tenant writes a real
``torch.save`` file as itself, and alice tries every way to bob's files: directly, by listing,
through a symlink and a hard link of her own, through ``/proc`` (the daemon's and a process of
bob's that holds his checkpoint open), his database and its WAL, and the socket.

Root only (CI runs as root); skipped elsewhere, saying why.
"""

from __future__ import annotations

import contextlib
import grp
import io
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.tenants import shared_root

TOP = Path(__file__).resolve().parents[2]

#: Run as alice: tries each way to bob's bytes, prints {probe: "denied" | "READ ..."}.
_PROBE = r"""
import json, os, sys
targets = json.loads(sys.argv[1])
out = {}
def attempt(name, fn):
    try:
        got = fn()
        out[name] = "READ " + repr(got)[:80]
    except OSError as e:
        out[name] = "denied" if e.errno in (1, 2, 13) else f"error {e.errno} {e.strerror}"
def read(path):
    with open(path, "rb") as f:
        return f.read(64)
attempt("checkpoint", lambda: read(targets["checkpoint"]))
attempt("list client dir", lambda: os.listdir(targets["client_dir"]))
attempt("database", lambda: read(targets["database"]))
attempt("database wal", lambda: read(targets["database"] + "-wal"))
attempt("database dir", lambda: os.listdir(os.path.dirname(targets["database"])))
link = os.path.join(targets["own_dir"], "model_round_2.pth")
os.symlink(targets["checkpoint"], link)
attempt("symlink", lambda: read(link))
hard = os.path.join(targets["own_dir"], "hard.pth")
attempt("hard link", lambda: (os.link(targets["checkpoint"], hard), read(hard)))
for pid in targets["pids"]:
    attempt(f"/proc/{pid}/fd", lambda: os.listdir(f"/proc/{pid}/fd"))
    attempt(f"/proc/{pid}/fd/3", lambda: read(f"/proc/{pid}/fd/3"))
    attempt(f"/proc/{pid}/root", lambda: read(f"/proc/{pid}/root" + targets["checkpoint"]))
    attempt(f"/proc/{pid}/mem", lambda: read(f"/proc/{pid}/mem"))
print(json.dumps(out))
"""

#: Run as bob: holds his checkpoint open (descriptor 3) until stdin closes.
_HOLD_OPEN = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.dup2(fd, 3)
print("open", flush=True)
sys.stdin.read()
"""


@dataclass(frozen=True)
class Accounts:
    daemon: str
    socket_group: str
    alice: str
    bob: str


def _run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    return done


@contextlib.contextmanager
def accounts() -> Iterator[Accounts]:
    """Real accounts for this test only (unique names), removed afterwards whatever happens."""
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "gpasswd", "setpriv"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed to make real accounts for the tenant-layout test")
    tag = secrets.token_hex(3)
    made = Accounts(f"ckd{tag}", f"ckd{tag}-users", f"ckd{tag}-alice", f"ckd{tag}-bob")
    users, groups = [], []
    try:
        for user in (made.daemon, made.alice, made.bob):
            _run(
                "useradd", "--system", "--user-group", "--no-create-home", "-s", "/bin/false", user
            )
            users.append(user)
        _run("groupadd", "--system", made.socket_group)
        groups.append(made.socket_group)
        _run("gpasswd", "-a", made.daemon, made.socket_group)  # sysusers' "m chunkd chunkd-users"
        _run("gpasswd", "-a", made.alice, made.daemon)  # the layout before issue 19
        yield made
    finally:
        for user in users:
            _run("userdel", user, check=False)  # also removes its user-group
        for group in groups:
            _run("groupdel", group, check=False)


def _as(user: str) -> list[str]:
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]


def _cli(*args: str | Path, user: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(TOP)}
    env.pop("CHUNKD_CONFIG", None)
    return subprocess.run(
        [*(_as(user) if user else []), sys.executable, "-m", "chunkd.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd="/",
    )


def _checkpoint(seed: int) -> bytes:
    import torch

    generator = torch.Generator().manual_seed(seed)
    buf = io.BytesIO()
    torch.save({"fc.weight": torch.randn(128, 64, generator=generator)}, buf)
    return buf.getvalue()


def _write_as(user: str, path: Path, data: bytes) -> None:
    """The tenant's own process writes its checkpoint (umask 022, as a training job would)."""
    done = subprocess.run(
        [
            *_as(user),
            sys.executable,
            "-c",
            "import os, sys; os.umask(0o022);"
            " open(sys.argv[1], 'wb').write(sys.stdin.buffer.read())",
            str(path),
        ],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()


def _wait_for(log: Path, proc: subprocess.Popen[bytes], match, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if match(event):
                    return event
        assert proc.poll() is None, f"the daemon exited {proc.returncode}:\n{log.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"no such event within {timeout_s}s:\n{log.read_text()[-4000:]}")


def _ingested(client: str, round_num: int):
    return lambda e: (
        e.get("event") == "checkpoint.ingested"
        and e.get("client") == client
        and e.get("round") == round_num
    )


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _serve_until_ready(user: str, config: Path, log: Path, cwd: Path, env: dict) -> None:
    """Run ``chunkd serve`` as ``user`` until ``daemon.ready``, then stop it (SIGTERM)."""
    command = [*_as(user), sys.executable, "-m", "chunkd.cli.main", "serve", "--config", config]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    try:
        _wait_for(log, proc, lambda e: e.get("event") == "daemon.ready")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_documented_tenant_layout_isolates_tenants_on_disk() -> None:
    for needed in (TOP, Path(sys.prefix)):
        closed = [d for d in (needed, *needed.parents) if not d.stat().st_mode & 0o001]
        if closed and os.geteuid() == 0:
            pytest.fail(
                f"{closed[-1]} keeps other users out of {needed}: the daemon and the tenants run "
                "as their own accounts from this checkout; clone into a directory others can "
                "traverse"
            )
    with shared_root() as base, accounts() as who:
        daemon_uid = pwd.getpwnam(who.daemon).pw_uid
        watch_root, state, runtime = base / "srv/fl", base / "var/lib/chunkd", base / "run/chunkd"
        watch_root.mkdir(parents=True, mode=0o755)
        for directory, mode in ((state, 0o700), (runtime, 0o711)):
            directory.mkdir(parents=True)
            os.chown(directory, daemon_uid, pwd.getpwnam(who.daemon).pw_gid)
            directory.chmod(mode)
        for directory in (base / "srv", base / "var", base / "var/lib", base / "run"):
            directory.chmod(0o755)
        config = base / "chunkd.toml"
        config.write_text(
            f'watch_root = "{watch_root}"\n'
            f'db_path = "{state}/{{client}}/client_{{client}}_chunks.db"\n'
            f'socket = "{runtime}/chunkd.sock"\n'
            f'socket_group = "{who.socket_group}"\n'
            'settle_delay = "0.2s"\nrescan_interval = "1s"\n'
        )
        os.chown(config, 0, grp.getgrnam(who.socket_group).gr_gid)
        config.chmod(0o640)  # as the install leaves it: root:chunkd-users

        env = {k: v for k, v in os.environ.items() if k not in {"CHUNKD_CONFIG", "NOTIFY_SOCKET"}}
        env["PYTHONPATH"] = str(TOP)
        # The old layout (alice in the daemon's group): the daemon says so at start-up.
        assert who.alice in grp.getgrnam(who.daemon).gr_mem
        old_log = base / "old-layout.log"
        _serve_until_ready(who.daemon, config, old_log, base, env)
        (unsafe,) = [e for e in _events(old_log) if e.get("event") == "layout.unsafe"]
        assert who.alice in str(unsafe["warning"]) and unsafe["level"] == "warning"

        # The operator's one command per tenant; a second run has nothing to do.
        for tenant, client in ((who.alice, "alice"), (who.bob, "bob")):
            done = _cli(
                "tenant", "add", tenant, client, "--config", config, "--daemon-user", who.daemon
            )
            assert done.returncode == 0, done.stderr
            again = _cli(
                "tenant", "add", tenant, client, "--config", config, "--daemon-user", who.daemon
            )
            assert "nothing to do" in again.stdout, again.stdout + again.stderr
        assert who.alice not in grp.getgrnam(who.daemon).gr_mem  # taken out of the reading group
        assert {who.alice, who.bob} <= set(grp.getgrnam(who.socket_group).gr_mem)
        bob_dir, alice_dir = watch_root / "client_bob", watch_root / "client_alice"
        st = bob_dir.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (
            pwd.getpwnam(who.bob).pw_uid,
            grp.getgrnam(who.daemon).gr_gid,
            0o2750,
        )

        log = base / "daemon.log"
        with open(log, "wb") as out:
            daemon = subprocess.Popen(
                [
                    *_as(who.daemon),
                    sys.executable,
                    "-m",
                    "chunkd.cli.main",
                    "serve",
                    "--config",
                    config,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=base,
                env=env,
            )
        holder = None
        try:
            _wait_for(log, daemon, lambda e: e.get("event") == "daemon.ready")
            alice_bytes, bob_bytes = _checkpoint(1), _checkpoint(2)
            _write_as(who.alice, alice_dir / "model_round_1.pth", alice_bytes)
            _write_as(who.bob, bob_dir / "model_round_1.pth", bob_bytes)
            _wait_for(log, daemon, _ingested("alice", 1))
            _wait_for(log, daemon, _ingested("bob", 1))  # the daemon reads both tenants
            assert not [e for e in _events(log) if e.get("event") == "layout.unsafe"]

            holder = subprocess.Popen(
                [
                    *_as(who.bob),
                    sys.executable,
                    "-c",
                    _HOLD_OPEN,
                    str(bob_dir / "model_round_1.pth"),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
            targets = {
                "checkpoint": str(bob_dir / "model_round_1.pth"),
                "client_dir": str(bob_dir),
                "database": str(state / "bob/client_bob_chunks.db"),
                "own_dir": str(alice_dir),
                "pids": [daemon.pid, holder.pid],
            }
            probe = subprocess.run(
                [*_as(who.alice), sys.executable, "-c", _PROBE, json.dumps(targets)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert probe.returncode == 0, probe.stderr
            results = json.loads(probe.stdout)
            assert len(results) == 7 + 4 * 2
            assert {k: v for k, v in results.items() if v != "denied"} == {}, results

            # the symlink alice planted is not taken for her either: her next round is, it is not
            _write_as(who.alice, alice_dir / "model_round_3.pth", _checkpoint(3))
            _wait_for(log, daemon, _ingested("alice", 3))
            socket = runtime / "chunkd.sock"
            listed = _cli("list", "--client", "alice", "--json", "--config", config, user=who.alice)
            assert listed.returncode == 0, listed.stderr
            rounds = json.loads(listed.stdout)["clients"][0]["rounds"]
            assert [r["round"] for r in rounds] == [1, 3]

            # through the socket, with the CLI as alice (it finds the socket in the config)
            everyone = _cli("list", "--json", "--config", config, user=who.alice)
            assert everyone.returncode == 0, everyone.stderr
            assert [c["client"] for c in json.loads(everyone.stdout)["clients"]] == ["alice"]
            outbox = base / "alice-out"  # somewhere alice may write, outside the watch root
            outbox.mkdir()
            os.chown(outbox, pwd.getpwnam(who.alice).pw_uid, -1)
            out = outbox / "bob.pth"
            refused = _cli(
                "restore", "--client", "bob", "--socket", socket, "-o", out, user=who.alice
            )
            assert refused.returncode == 6, refused.stderr  # forbidden
            assert "may not read client 'bob'" in refused.stderr
            assert not out.exists()
            mine = outbox / "round_1.pth"
            done = _cli(
                "restore",
                "--client",
                "alice",
                "--round",
                "1",
                "--config",
                config,
                "-o",
                mine,
                user=who.alice,
            )
            assert done.returncode == 0, done.stderr
            assert mine.read_bytes() == alice_bytes
        finally:
            if holder is not None:
                assert holder.stdin is not None
                holder.stdin.close()
                holder.wait(timeout=30)
            daemon.terminate()
            daemon.wait(timeout=60)
