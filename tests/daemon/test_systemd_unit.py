"""systemd/chunkd.service: what SPEC.md "systemd" asks for, checked by systemd itself where present.

``systemd-analyze`` is optional (containers and macOS have none); the static checks always run.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
UNIT = SYSTEMD_DIR / "chunkd.service"
VERIFY = SYSTEMD_DIR / "verify.sh"
MAX_EXPOSURE = 2.5
EXPOSURE_RE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not on PATH (no systemd here); the static unit checks still ran",
)


def _pythonpath() -> str:
    """The checkout first, so the child imports this chunkd whether or not it is installed."""
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def _settings(text: str) -> dict[str, list[str]]:
    """``Section.Key`` → every value assigned, in order (systemd keys may repeat)."""
    section = ""
    settings: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def _run_verify(
    script: Path, max_exposure: float | None = None
) -> subprocess.CompletedProcess[str]:
    env = None if max_exposure is None else {**os.environ, "CHUNKD_MAX_EXPOSURE": str(max_exposure)}
    return subprocess.run(
        ["sh", str(script)], capture_output=True, text=True, timeout=120, check=False, env=env
    )


@pytest.fixture(scope="module")
def verify_result() -> subprocess.CompletedProcess[str]:
    return _run_verify(VERIFY)


# --- static: always ---------------------------------------------------------------------------

EXPECTED = {
    "Service.Type": "notify",
    "Service.NotifyAccess": "main",
    "Service.ExecStart": "/usr/local/bin/chunkd serve --config /etc/chunkd/chunkd.toml",
    "Service.WatchdogSec": "30s",
    "Service.Restart": "on-failure",
    "Service.RestartPreventExitStatus": "78",
    "Service.User": "chunkd",
    "Service.Group": "chunkd",
    "Service.RuntimeDirectory": "chunkd",
    "Service.RuntimeDirectoryMode": "0711",
    "Service.StateDirectory": "chunkd",
    "Service.KillSignal": "SIGTERM",
    "Service.TimeoutStopSec": "60s",
    "Service.UMask": "0077",
    "Service.StateDirectoryMode": "0700",
    "Service.MemoryHigh": "1G",
    "Service.MemoryMax": "2G",
    "Service.TasksMax": "512",
    "Service.LimitNOFILE": "4096",
    "Service.Nice": "10",
    "Service.IOSchedulingClass": "best-effort",
    "Service.ProtectSystem": "strict",
    "Service.ProtectHome": "true",
    "Service.PrivateTmp": "true",
    "Service.PrivateNetwork": "true",
    "Service.NoNewPrivileges": "true",
    "Service.RestrictAddressFamilies": "AF_UNIX",
    "Service.CapabilityBoundingSet": "",
    "Service.AmbientCapabilities": "",
    "Service.IPAddressDeny": "any",
    "Service.SystemCallArchitectures": "native",
    "Install.WantedBy": "multi-user.target",
}


@pytest.mark.parametrize(("key", "value"), sorted(EXPECTED.items()))
def test_unit_sets(key: str, value: str) -> None:
    assert _settings(UNIT.read_text()).get(key) == [value]


def test_unit_writable_paths_and_syscall_filter() -> None:
    settings = _settings(UNIT.read_text())
    # The databases live in the StateDirectory: the client directories stay read-only.
    assert "Service.ReadWritePaths" not in settings
    filters = settings["Service.SystemCallFilter"]
    assert filters[0] == "@system-service"
    assert "~@privileged @resources" in filters


def test_sysusers_creates_the_service_user_and_the_socket_group() -> None:
    lines = [
        line
        for line in (SYSTEMD_DIR / "chunkd.sysusers").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines == [
        'u chunkd - "chunkd checkpoint store" /var/lib/chunkd',
        "g chunkd-users -",  # tenants reach the socket through this group, never through chunkd
        "m chunkd chunkd-users",
    ]


# --- systemd-analyze --------------------------------------------------------------------------


@needs_systemd_analyze
def test_verify_passes(verify_result: subprocess.CompletedProcess[str]) -> None:
    assert verify_result.returncode == 0, verify_result.stdout + verify_result.stderr
    assert "verify: ok" in verify_result.stdout


@needs_systemd_analyze
def test_security_exposure_is_low(verify_result: subprocess.CompletedProcess[str]) -> None:
    if "security: skipped" in verify_result.stdout:
        pytest.skip("systemd-analyze security has no --offline here (systemd < 250)")
    match = EXPOSURE_RE.search(verify_result.stdout)
    assert match, verify_result.stdout + verify_result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, verify_result.stdout


@needs_systemd_analyze
def test_verify_rejects_a_misspelt_option(tmp_path: Path) -> None:
    """systemd-analyze only warns on unknown keys; verify.sh must turn that into a failure."""
    copy = tmp_path / "systemd"
    copy.mkdir()
    for name in ("verify.sh", "chunkd.service", "chunkd.sysusers"):
        shutil.copy2(SYSTEMD_DIR / name, copy / name)
    unit = copy / "chunkd.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    result = _run_verify(copy / "verify.sh")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ProtectSytem" in result.stderr


@needs_systemd_analyze
def test_the_readmes_metrics_drop_in_verifies(tmp_path: Path) -> None:
    """Issue 21: the drop-in the README gives for ``metrics_addr`` is valid systemd, applied
    after the unit's own lines (as systemd applies a drop-in), and opens only what it says."""
    readme = (SYSTEMD_DIR.parent / "README.md").read_text()
    section = readme[readme.index("For `metrics_addr`, a") :]
    block = section[section.index("```ini\n") + 7 : section.index("```\n", 10)]
    assert block.startswith("[Service]\n")
    drop_in = block.removeprefix("[Service]\n")
    assert "IPAddressAllow=localhost" in drop_in and "PrivateNetwork=false" in drop_in
    copy = tmp_path / "systemd"
    copy.mkdir()
    for name in ("verify.sh", "chunkd.service", "chunkd.sysusers"):
        shutil.copy2(SYSTEMD_DIR / name, copy / name)
    unit = copy / "chunkd.service"
    text = unit.read_text()
    install = text.index("[Install]")
    unit.write_text(text[:install] + drop_in + "\n" + text[install:])
    # opening loopback costs exposure (1.2 here, "OK"; the unit alone stays at or under 1.0)
    result = _run_verify(copy / "verify.sh", max_exposure=2.0)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the unit's seccomp rules against the daemon's libraries ----------------------------------

# Installs, with libseccomp through ctypes, the rules systemd derives from the unit: first
# MemoryDenyWriteExecute=true (src/shared/seccomp-util.c: no W+X mmap, no mprotect/pkey_mprotect to
# PROT_EXEC, no shmat SHM_EXEC), then the SystemCallFilter= allow-list with EPERM for the rest
# (SystemCallErrorNumber=EPERM). Then it execs a fresh interpreter, as systemd would, so Python's
# own start-up runs under the filters too.
# argv: a JSON list of the allowed syscalls ([] = no allow-list), then the script and its arguments.
LAUNCHER = textwrap.dedent(
    """
    import ctypes, ctypes.util, errno, json, mmap, os, sys

    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
    class Cmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    ALLOW, DENY, MASKED_EQ = 0x7FFF0000, 0x00050000 | errno.EPERM, 7
    W, X, SHM_EXEC = mmap.PROT_WRITE, mmap.PROT_EXEC, 0o100000

    ctx = lib.seccomp_init(ALLOW)
    for name, mask in (("mmap", W | X), ("mprotect", X), ("pkey_mprotect", X), ("shmat", SHM_EXEC)):
        cmp = Cmp(2, MASKED_EQ, mask, mask)
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        assert lib.seccomp_rule_add_array(ctx, DENY, nr, 1, ctypes.byref(cmp)) == 0, name
    assert lib.seccomp_load(ctx) == 0

    allowed = json.loads(sys.argv[1])
    if allowed:  # last: it would refuse the seccomp() call that loads another filter
        ctx = lib.seccomp_init(DENY)
        for name in allowed:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr >= 0:  # names of other architectures resolve to < 0
                assert lib.seccomp_rule_add_array(ctx, ALLOW, nr, 0, None) == 0, name
        assert lib.seccomp_load(ctx) == 0
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
    """
)

# The work the daemon does: zstd, sha256 on a thread pool, SQLite in WAL mode with an flock, an
# inotify observer, an APScheduler job, structlog JSON, an AF_UNIX listener chowned to a group.
EXERCISE = textwrap.dedent(
    """
    import fcntl, hashlib, mmap, os, shutil, socket, sqlite3, sys, tempfile, threading
    from concurrent.futures import ThreadPoolExecutor

    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("MemoryDenyWriteExecute is not in force")
    except OSError:
        pass
    if sys.argv[1] == "filtered":
        try:
            os.sched_setaffinity(0, os.sched_getaffinity(0))  # @resources
            sys.exit("SystemCallFilter is not in force")
        except PermissionError:
            pass

    import zstandard
    from apscheduler.schedulers.background import BackgroundScheduler
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers.inotify import InotifyObserver
    from chunkd.daemon.sdnotify import notify
    from chunkd.log import configure_logging, get_logger

    work = tempfile.mkdtemp()
    data = os.urandom(1 << 20) + bytes(1 << 20)
    packed = zstandard.ZstdCompressor(level=3).compress(data)
    assert zstandard.ZstdDecompressor().decompress(packed) == data
    with ThreadPoolExecutor(4) as pool:
        assert len(set(pool.map(lambda b: hashlib.sha256(b).hexdigest(), [data] * 8))) == 1
    path = os.path.join(work, "client_1_chunks.db")
    db = sqlite3.connect(path)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    db.execute("CREATE TABLE chunk_data (chunk_hash TEXT UNIQUE, data BLOB)")
    db.execute("INSERT INTO chunk_data VALUES (?, ?)", ("h", packed))
    db.commit()
    db.execute("DELETE FROM chunk_data")
    db.commit()
    db.execute("PRAGMA incremental_vacuum")
    db.close()

    closed = threading.Event()
    class Handler(FileSystemEventHandler):
        def on_closed(self, event):
            closed.set()
    observer = InotifyObserver()
    observer.schedule(Handler(), work, recursive=True)
    observer.start()
    with open(os.path.join(work, "model_round_1.pth"), "wb") as f:
        f.write(b"x")
    assert closed.wait(10), "no inotify event"
    observer.stop()
    observer.join()

    ran = threading.Event()
    scheduler = BackgroundScheduler()
    scheduler.add_job(ran.set, "interval", seconds=0.1)
    scheduler.start()
    assert ran.wait(10), "no scheduler tick"
    scheduler.shutdown()

    sock_path = os.path.join(work, "chunkd.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    os.chmod(sock_path, 0o660)
    os.chown(sock_path, -1, os.getgid())  # socket_group
    server.listen()
    notify("READY=1")
    configure_logging("json")
    get_logger("seccomp").info("daemon.ready")
    server.close()
    shutil.rmtree(work)  # the probe leaves nothing in /tmp
    """
)


def _syscall_group(name: str, analyze: str) -> frozenset[str]:
    """A `@group` (or plain syscall) expanded to syscall names, nested groups included."""
    if not name.startswith("@"):
        return frozenset({name})
    out = subprocess.run(
        [analyze, "syscall-filter", name], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    names: set[str] = set()
    for line in out.splitlines():
        item = line.strip()
        if item and not item.startswith("#") and item != name:
            names |= _syscall_group(item, analyze)
    return frozenset(names)


def _unit_syscall_allow_list(analyze: str) -> set[str]:
    """The allow-list the unit's SystemCallFilter= lines produce, in systemd's order of merging."""
    allowed: set[str] = set()
    for value in _settings(UNIT.read_text())["Service.SystemCallFilter"]:
        deny = value.startswith("~")
        names = set().union(*(_syscall_group(g, analyze) for g in value.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="seccomp is Linux")
@pytest.mark.skipif(ctypes.util.find_library("seccomp") is None, reason="libseccomp not installed")
def test_daemon_work_runs_under_the_units_seccomp_rules(tmp_path: Path) -> None:
    """Evidence for MemoryDenyWriteExecute=true and the SystemCallFilter= lines (@chown kept).

    Without systemd-analyze (to expand the @groups) only MemoryDenyWriteExecute is checked.
    """
    analyze = shutil.which("systemd-analyze")
    allowed = sorted(_unit_syscall_allow_list(analyze)) if analyze else []
    script = tmp_path / "exercise.py"
    script.write_text(EXERCISE)
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LAUNCHER,
            json.dumps(allowed),
            str(script),
            "filtered" if allowed else "mdwe-only",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"event": "daemon.ready"' in result.stdout
