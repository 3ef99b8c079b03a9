"""Hostile checkpoints fed to a real daemon: refused, nothing executed, nothing outside read.

Every payload below does something under ``pickle.load`` / ``torch.load(weights_only=False)``
(each control is checked: the payload really creates its marker when unpickled). Dropped into a
client directory of a running daemon, each must be refused with ``checkpoint.rejected``; no
marker appears; the client's stored rounds and chunks do not change; the daemon keeps serving
and still takes the next good checkpoint.

"Nothing outside the roots is read" is checked with inotify: the directories that symlinks point
into are watched for IN_OPEN/IN_ACCESS after the test has stopped touching them, so any event
there would be the daemon's.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import pickle
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
from strategies import (
    RawEntry,
    RebuildTensor,
    Reduce,
    StorageId,
    build_raw_zip,
    crafted_checkpoint,
    read_members,
    zip_members,
)

from chunkd.errors import CheckpointError
from chunkd.ingest import IngestOptions, ingest_file
from chunkd.store import ChunkStore

from .conftest import (
    OpenProbe,
    model_bytes,
    ping,
    query,
    request,
    round_shas,
    rss_kib,
    sha256,
    wait_for,
    write_atomic,
)

pytestmark = pytest.mark.slow


def good_members() -> dict[str, bytes]:
    return read_members(model_bytes(7, 64 << 10))


def with_pickle(payload: bytes) -> bytes:
    """A real checkpoint whose ``data.pkl`` is ``payload`` (CRCs correct)."""
    members = good_members()
    members["archive/data.pkl"] = payload
    return zip_members(members)


def nested_reduce(command: str) -> bytes:
    """``getattr(__import__('os'), 'system')(command)``: REDUCE on the result of REDUCEs."""
    return (
        b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__import__\nX\x02\x00\x00\x00os\x85R"
        b"X\x06\x00\x00\x00system\x86RX"
        + len(command).to_bytes(4, "little")
        + command.encode()
        + b"\x85R."
    )


def deflate_bomb(inflated_bytes: int) -> bytes:
    """A checkpoint whose storage record is DEFLATE-compressed: ~1000:1, ``inflated_bytes``."""
    members = good_members()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
        info = zipfile.ZipInfo("archive/data/bomb", date_time=(2024, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        zeros = bytes(1 << 20)
        with zf.open(info, "w", force_zip64=True) as w:
            for _ in range(inflated_bytes >> 20):
                w.write(zeros)
    return buf.getvalue()


def overlap_bomb(copies: int) -> bytes:
    """Many central-directory entries sharing one local header and payload (Fifield's bomb)."""
    members = good_members()
    entries = [RawEntry(name.encode(), data) for name, data in members.items()]
    plain = build_raw_zip(entries)
    shared = plain.index(b"PK\x03\x04", plain.index(b"archive/data/"))
    extra = [
        RawEntry(f"archive/data/{i}".encode(), b"", write_local=False, cd_header_offset=shared)
        for i in range(900, 900 + copies)
    ]
    return build_raw_zip([*entries, *extra])


def dotdot_member() -> bytes:
    members = good_members()
    members["archive/../../../../tmp/chunkd-escape"] = b"escaped\n"
    return zip_members(members)


def absolute_member() -> bytes:
    members = good_members()
    members["/tmp/chunkd-escape-abs"] = b"escaped\n"
    return zip_members(members)


def huge_cd_entry() -> bytes:
    """A zip64 central entry declaring a 2**62-byte member."""
    members = good_members()
    entries = [RawEntry(name.encode(), data) for name, data in members.items()]
    huge = (1 << 62).to_bytes(8, "little")
    extra = b"\x01\x00\x10\x00" + huge + huge
    entries.append(
        RawEntry(b"archive/data/77", b"", cd_size=0xFFFFFFFF, cd_extra=extra, compressed_size=0)
    )
    return build_raw_zip(entries)


def hostile_files(marker: Path) -> dict[str, tuple[bytes, bool]]:
    """name -> (file bytes, whether unpickling its data.pkl would create ``marker``)."""
    command = f"touch {marker}"
    tensor = RebuildTensor(StorageId("0", 16), 0, (16,), (1,))
    return {
        "os_system": (with_pickle(pickle.dumps(Reduce(os.system, command), protocol=2)), True),
        "os_system_proto4": (
            with_pickle(pickle.dumps(Reduce(os.system, command), protocol=4)),
            True,
        ),
        "builtins_eval": (
            with_pickle(
                pickle.dumps(
                    Reduce(builtins.eval, f"__import__('os').system({command!r})"), protocol=2
                )
            ),
            True,
        ),
        "builtins_exec_in_state_dict": (
            crafted_checkpoint(
                {"model": {"w": tensor}, "hook": Reduce(builtins.exec, f"os.system({command!r})")},
                {"0": bytes(64)},
            ),
            False,  # unpickling needs torch's persistent_load first; the others are controls
        ),
        "nested_reduce": (with_pickle(nested_reduce(command)), True),
        "subprocess": (
            with_pickle(pickle.dumps(Reduce(subprocess.call, ["touch", str(marker)]))),
            True,
        ),
        "huge_declared_storage": (
            crafted_checkpoint(
                {"w": RebuildTensor(StorageId("0", 1 << 62), 0, (4,), (1,))}, {"0": bytes(16)}
            ),
            False,
        ),
        "deflate_bomb_1GiB": (deflate_bomb(1 << 30), False),
        "overlap_bomb_1000": (overlap_bomb(1000), False),
        "member_with_dotdot": (dotdot_member(), False),
        "member_absolute": (absolute_member(), False),
    }


def test_hostile_checkpoints_are_refused_by_the_daemon(tmp_path, daemon_factory, figures):
    marker = tmp_path / "MARKER"
    files = hostile_files(marker)
    # controls: the payloads are real
    for name, (data, runs) in files.items():
        if not runs:
            continue
        pkl = read_members(data)["archive/data.pkl"]
        with contextlib.suppress(Exception):  # e.g. no persistent_load after the payload ran
            pickle.loads(pkl)  # what chunkd must never do
        assert marker.exists(), f"control: {name} did not run under pickle.loads"
        marker.unlink()

    daemon = daemon_factory(settle_delay="0.1s", rescan_interval="1s")
    client_dir = daemon.watch_root / "client_1"
    good = model_bytes(1, 256 << 10)
    write_atomic(client_dir / "model_round_1.pth", good)
    daemon.wait_event(lambda e: e.get("event") == "checkpoint.ingested")
    db = daemon.db("1")
    before = _contents(db)
    rss_before = _rss(daemon)

    paths = {}
    for i, (name, (data, _runs)) in enumerate(sorted(files.items()), start=100):
        paths[name] = client_dir / f"{name}_round_{i}.pth"
        write_atomic(paths[name], data)
    wanted = {str(p) for p in paths.values()}
    rejected = daemon.wait_event(
        lambda e: e.get("event") == "checkpoint.rejected" and e.get("path") in wanted,
        timeout_s=90,
        count=len(wanted),
    )
    reasons = {Path(str(e["path"])).name: f"{e.get('reason')}: {e.get('error')}" for e in rejected}
    assert len(reasons) == len(wanted)
    assert not marker.exists(), "a payload ran"
    assert not Path("/tmp/chunkd-escape").exists()
    assert not Path("/tmp/chunkd-escape-abs").exists()
    assert _contents(db) == before, "a refused file changed the stored rounds or chunks"
    for name, path in paths.items():
        assert path.read_bytes() == files[name][0], f"{name} was modified"
    # the daemon keeps serving and still takes the next good checkpoint
    ping(daemon.socket)
    write_atomic(client_dir / "model_round_2.pth", model_bytes(2, 256 << 10))
    daemon.wait_event(lambda e: e.get("event") == "checkpoint.ingested" and e.get("round") == 2)
    rss_after = _rss(daemon)
    assert rss_after - rss_before < 256 << 10, "a bomb was inflated into memory (RSS in KiB)"
    assert daemon.stop() == 0
    figures.update(
        kinds=len(files),
        rejected=len(reasons),
        executed=0,
        rss_kib_before=rss_before,
        rss_kib_after=rss_after,
        reasons=reasons,
    )
    figures.save()


def test_huge_declared_member_is_refused(tmp_path):
    """A zip64 entry declaring a 2**62-byte member: refused from the headers, nothing allocated.

    (Engine level: the daemon treats "ends past the end of the file" as possibly still being
    written and retries it for ~30 s before the same refusal.)
    """
    path = tmp_path / "model_round_2.pth"
    path.write_bytes(huge_cd_entry())
    with ChunkStore.open_writer(tmp_path / "c.db") as store:
        before = store.round_numbers()
        with pytest.raises(CheckpointError, match="past the end"):
            ingest_file(path, store, IngestOptions())
        assert store.round_numbers() == before


def _contents(db: Path) -> tuple[object, ...]:
    return (
        tuple(round_shas(db).items()),
        query(db, "SELECT COUNT(*), COALESCE(SUM(length(data)), 0) FROM chunk_data")[0],
        query(db, "SELECT COUNT(*) FROM chunk_metadata")[0][0],
    )


def _rss(daemon) -> int:
    assert daemon.proc is not None
    return rss_kib(daemon.proc.pid)


def test_nothing_outside_the_roots_is_read(tmp_path, daemon_factory, figures):
    """Symlinks from inside the watch root to checkpoints outside it are never followed."""
    outside = tmp_path / "outside"
    secret_dir, evil_client, late_dir = outside / "secret", outside / "evil", outside / "late"
    for d in (secret_dir, evil_client, late_dir):
        d.mkdir(parents=True)
    secret = model_bytes(66, 64 << 10)
    write_atomic(secret_dir / "model_round_66.pth", secret)
    write_atomic(evil_client / "model_round_67.pth", model_bytes(67, 64 << 10))
    (secret_dir / "model_round_66.pth.tmp").unlink(missing_ok=True)

    daemon = daemon_factory(settle_delay="0.1s", rescan_interval="1s")
    client_dir = daemon.watch_root / "client_1"
    write_atomic(client_dir / "model_round_1.pth", model_bytes(1, 64 << 10))
    daemon.wait_event(lambda e: e.get("event") == "checkpoint.ingested")
    probe = OpenProbe(secret_dir, evil_client, late_dir)
    try:
        # a checkpoint that is a symlink to a file outside, before and after a rescan
        (client_dir / "model_round_50.pth").symlink_to(secret_dir / "model_round_66.pth")
        # a client directory that is a symlink to a directory outside
        (daemon.watch_root / "client_evil").symlink_to(evil_client)
        # a sub-directory of a client that is a symlink; a checkpoint appears in it later
        (client_dir / "sub").symlink_to(late_dir)
        # a hard-to-spot one: a relative symlink climbing out of the root
        rel = os.path.relpath(secret_dir / "model_round_66.pth", client_dir)
        (client_dir / "model_round_51.pth").symlink_to(rel)
        time.sleep(2.5)  # two reconciliation scans
        late = model_bytes(68, 64 << 10)
        fd = os.open(late_dir / "model_round_68.pth", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, late)
        os.close(fd)
        probe.events()  # our own write above
        time.sleep(2.5)
        # the socket's ingest command refuses paths that lead outside
        refusals = {}
        for path in (
            client_dir / "model_round_50.pth",
            client_dir / "sub" / "model_round_68.pth",
            secret_dir / "model_round_66.pth",
            Path(f"{client_dir}/../../outside/secret/model_round_66.pth"),
        ):
            reply, _ = request(daemon.socket, {"cmd": "ingest", "client": "1", "path": str(path)})
            refusals[str(path)] = reply.code
            assert reply.code == "forbidden", reply.raw
        time.sleep(0.5)
        opened = probe.events()
    finally:
        probe.close()
    assert opened == [], f"the daemon opened files outside its roots: {opened}"
    stored = round_shas(daemon.db("1"))
    assert sorted(stored) == [1], stored
    assert sha256(secret) not in stored.values()
    assert not any(e.get("client") == "evil" for e in daemon.events())
    ping(daemon.socket)
    assert daemon.stop() == 0
    figures.update(outside_opens=len(opened), ingest_refusals=refusals, rounds=sorted(stored))
    figures.save()


# -- a pickle that is cheap to write and exponential to walk ------------------------------------

_BOMB_CHILD = textwrap.dedent(
    """
    import resource
    import sys

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a repr bomb must not take the host
    from chunkd.errors import CheckpointError
    from chunkd.ingest import IngestOptions, ingest_file
    from chunkd.store import ChunkStore

    store = ChunkStore.open_writer(sys.argv[1])
    try:
        ingest_file(sys.argv[2], store, IngestOptions())
    except CheckpointError as e:
        print("rejected", type(e).__name__, str(e)[:200])
    else:
        print("accepted")
    """
)


def shared_tuple_bomb(depth: int, use: str) -> bytes:
    """``t = (t, t)`` ``depth`` times (DUP + TUPLE2): 2**depth leaves in ~2*depth bytes.

    Hashing it (a dict key) or printing it (an error message, a tensor path) walks every leaf.
    """
    body = b")" + b"2\x86" * depth  # EMPTY_TUPLE, then DUP TUPLE2 ...
    if use == "dict_key":
        return b"\x80\x02}" + body + b"Ns."  # {t: None}
    return b"\x80\x02" + body + b"Q."  # a persistent id that is not a storage


@pytest.mark.parametrize("use", ["dict_key", "persistent_id"])
def test_shared_tuple_bomb_is_refused_quickly(tmp_path, use):
    """Regression (found by this campaign): pickle_scan hashed and repr()ed attacker-shared
    tuples without bound, so a ~100-byte data.pkl took exponential time and memory."""
    data = with_pickle(shared_tuple_bomb(48, use))
    path = tmp_path / "model_round_2.pth"
    path.write_bytes(data)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _BOMB_CHILD, str(tmp_path / "c.db"), str(path)],
            capture_output=True,
            text=True,
            timeout=6,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a 100-byte data.pkl kept the reader busy for more than 6 s")
    assert done.stdout.startswith("rejected"), (done.stdout, done.stderr[-500:])


def test_shared_tuple_bomb_does_not_stall_the_client(tmp_path, daemon_factory):
    """Regression: the bomb used to hang the client's lane for good."""
    daemon = daemon_factory(settle_delay="0.1s")
    client_dir = daemon.watch_root / "client_1"
    write_atomic(client_dir / "bomb_round_1.pth", with_pickle(shared_tuple_bomb(48, "dict_key")))
    time.sleep(1.0)
    write_atomic(client_dir / "model_round_2.pth", model_bytes(2, 64 << 10))
    wait_for(
        lambda: any(
            e.get("event") == "checkpoint.ingested" and e.get("round") == 2 for e in daemon.events()
        ),
        8,
        "the good checkpoint after the bomb",
    )
    ping(daemon.socket)


def test_one_poison_file_does_not_starve_the_client(tmp_path, daemon_factory):
    """Regression (found by this campaign): an unexpected exception on one file (pthzip's
    UnicodeEncodeError) reached ClientLane._run, which cleared every pending path of the client
    and recorded nothing, so the file was retried on every rescan and starved the others."""
    from .test_fuzz_reader import non_cp437_member

    daemon = daemon_factory(settle_delay="0.1s", rescan_interval="1s")
    client_dir = daemon.watch_root / "client_1"
    write_atomic(client_dir / "bad_round_1.pth", non_cp437_member(model_bytes(7, 4096)))
    write_atomic(client_dir / "model_round_2.pth", model_bytes(2, 64 << 10))
    wait_for(
        lambda: any(
            e.get("event") == "checkpoint.ingested" and e.get("round") == 2 for e in daemon.events()
        ),
        8,
        "the good checkpoint next to the poison one",
    )
    assert any(e.get("event") == "checkpoint.rejected" for e in daemon.events())
