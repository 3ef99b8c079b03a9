"""Fuzzing the checkpoint reader with mutated real ``.pth`` files (hypothesis; atheris if present).

Seeds are real ``torch.save`` files: a CNN state_dict with BatchNorm buffers, a FederatedScope
container, nested containers with tied weights and views over many dtypes, a buffer-saved file
(top folder ``archive``), and a ``_rebuild_tensor_v3`` dtype. Each case mutates one seed:

* ``bitflip`` / ``bytes``: flipped bits or overwritten bytes anywhere;
* ``truncate``: the file cut short; ``splice``: a range of another seed pasted in;
* ``zipfield``: one field of a local header, a central-directory entry or the end record set to
  an interesting value (0, 1, all ones, off by one, doubled, random);
* ``pickle``: ``data.pkl`` edited (bytes changed, inserted, deleted, opcodes swapped) and the
  archive rebuilt with correct CRCs, so the edit reaches the pickle walker instead of the CRC check;
* ``payload``: tensor bytes changed with the CRC fixed: a valid, different checkpoint.

Every case is ingested into a real store (``ingest_file``, round 1 forced, so nothing is skipped
as already seen) under a 5 s alarm. The only outcomes allowed: the file is taken and restores
byte-identical, or it is refused with a :class:`~chunkd.errors.CheckpointError`. A hang, any other
exception, or a restore that differs is a failure that hypothesis shrinks and reports.
``--torture`` runs 10,000 cases (CI: 300).
"""

from __future__ import annotations

import collections
import io
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import RawEntry, build_raw_zip, read_members

from chunkd.errors import CheckpointError
from chunkd.ingest import IngestOptions, ingest_file
from chunkd.restore import restore_round
from chunkd.store import ChunkStore

pytestmark = pytest.mark.torture

CASE_TIMEOUT_S = 5


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    #: (offset, size) of every header field in the file
    fields: tuple[tuple[int, int], ...]
    members: dict[str, bytes]


def build_seeds(directory: Path) -> list[Seed]:
    import torch

    torch.manual_seed(0)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Linear(6, 4)
    )
    cnn(torch.randn(2, 3, 8, 8))  # training mode: BatchNorm's running stats move
    base = torch.randn(6, 5)
    nested = {
        "round": 7,
        "model": {
            "emb": base,
            "tied": base,
            "view": base[2:, 1:],
            "t": base.t(),
            "half": torch.randn(17).half(),
            "bf16": torch.randn(9).bfloat16(),
            "i8": torch.arange(-5, 5, dtype=torch.int8),
            "mask": torch.tensor([True, False, True]),
            "c64": torch.randn(4, dtype=torch.complex64),
            "scalar": torch.tensor(3.5),
            "empty": torch.empty(0, 3),
        },
        "meta": ["fedavg", 0.1, None, (1, 2)],
    }
    objects: dict[str, object] = {
        "cnn_state_dict": cnn.state_dict(),
        "federatedscope": {"cur_round": 3, "model": cnn.state_dict()},
        "nested_shared": nested,
        "v3_dtypes": {"u16": torch.arange(40).to(torch.uint16), "w": torch.randn(30)},
    }
    seeds = []
    for name, obj in objects.items():
        path = directory / f"{name}.pth"
        torch.save(obj, path)
        seeds.append(_seed(name, path.read_bytes()))
    buf = io.BytesIO()
    torch.save(collections.OrderedDict(w=torch.randn(100)), buf, pickle_protocol=4)
    seeds.append(_seed("buffer_protocol4", buf.getvalue()))
    return seeds


def _seed(name: str, data: bytes) -> Seed:
    fields: list[tuple[int, int]] = []
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
        for info in zf.infolist():
            at = info.header_offset  # local header: version .. extra length
            fields += [(at + o, n) for o, n in _LOCAL_FIELDS]
    eocd = data.rfind(b"PK\x05\x06")
    fields += [(eocd + o, n) for o, n in _EOCD_FIELDS]
    cd_offset = struct.unpack_from("<I", data, eocd + 16)[0]
    pos = cd_offset
    while data[pos : pos + 4] == b"PK\x01\x02":
        fields += [(pos + o, n) for o, n in _CENTRAL_FIELDS]
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        pos += 46 + name_len + extra_len + comment_len
    return Seed(name, data, tuple(fields), members)


_LOCAL_FIELDS = (
    (4, 2), (6, 2), (8, 2), (10, 2), (12, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2),
)  # fmt: skip
_CENTRAL_FIELDS = (
    (4, 2), (6, 2), (8, 2), (10, 2), (12, 2), (14, 2), (16, 4), (20, 4), (24, 4),
    (28, 2), (30, 2), (32, 2), (34, 2), (36, 2), (38, 4), (42, 4),
)  # fmt: skip
_EOCD_FIELDS = ((4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2))

KINDS = ("bitflip", "bytes", "truncate", "splice", "zipfield", "pickle", "payload")


def rebuild(seed: Seed, replace: dict[str, bytes]) -> bytes:
    """The seed's archive with some members replaced; names, order and CRCs as zipfile writes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in seed.members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, replace.get(name, data))
    return buf.getvalue()


@st.composite
def mutations(draw: st.DrawFn, seeds: list[Seed]) -> tuple[str, str, bytes]:
    seed = draw(st.sampled_from(seeds))
    kind = draw(st.sampled_from(KINDS))
    data = bytearray(seed.data)
    size = len(data)
    if kind == "bitflip":
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, size - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == "bytes":
        at = draw(st.integers(0, size - 1))
        new = draw(st.binary(min_size=1, max_size=16))
        data[at : at + len(new)] = new
    elif kind == "truncate":
        del data[draw(st.integers(0, size - 1)) :]
    elif kind == "splice":
        other = draw(st.sampled_from(seeds)).data
        start = draw(st.integers(0, len(other) - 1))
        piece = other[start : start + draw(st.integers(1, 4096))]
        at = draw(st.integers(0, size))
        cut = draw(st.integers(0, 4096))
        data[at : at + cut] = piece
    elif kind == "zipfield":
        at, width = draw(st.sampled_from(seed.fields))
        old = int.from_bytes(data[at : at + width], "little")
        top = (1 << (8 * width)) - 1
        value = draw(
            st.sampled_from([0, 1, top, top - 1, old + 1, old - 1, old * 2, old // 2, old + 64])
            | st.integers(0, top)
        )
        data[at : at + width] = (value & top).to_bytes(width, "little")
    elif kind == "pickle":
        name = next(n for n in seed.members if n.endswith("/data.pkl"))
        pkl = bytearray(seed.members[name])
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["set", "insert", "delete", "swap"]))
            at = draw(st.integers(0, len(pkl) - 1))
            if op == "set":
                pkl[at] = draw(st.integers(0, 255))
            elif op == "insert":
                pkl[at:at] = draw(st.binary(min_size=1, max_size=8))
            elif op == "delete":
                del pkl[at : at + draw(st.integers(1, 8))]
            else:
                other = draw(st.integers(0, len(pkl) - 1))
                pkl[at], pkl[other] = pkl[other], pkl[at]
            if not pkl:
                pkl = bytearray(b".")
        data = bytearray(rebuild(seed, {name: bytes(pkl)}))
    else:  # payload: a valid, different checkpoint
        storages = [n for n in seed.members if "/data/" in n and seed.members[n]]
        name = draw(st.sampled_from(storages))
        payload = bytearray(seed.members[name])
        at = draw(st.integers(0, len(payload) - 1))
        payload[at] ^= 0xFF
        data = bytearray(_patch_member(seed, name, bytes(payload)))
    return seed.name, kind, bytes(data)


def _patch_member(seed: Seed, name: str, payload: bytes) -> bytes:
    """The seed with one member's bytes replaced in place (same size) and both CRCs fixed."""
    data = bytearray(seed.data)
    with zipfile.ZipFile(io.BytesIO(seed.data)) as zf:
        info = zf.getinfo(name)
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    data[start : start + len(payload)] = payload
    crc = struct.pack("<I", zlib.crc32(payload))
    data[info.header_offset + 14 : info.header_offset + 18] = crc
    eocd = data.rfind(b"PK\x05\x06")
    pos = struct.unpack_from("<I", data, eocd + 16)[0]
    encoded = name.encode()
    while data[pos : pos + 4] == b"PK\x01\x02":
        n, e, c = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46 : pos + 46 + n] == encoded:
            data[pos + 16 : pos + 20] = crc
        pos += 46 + n + e + c
    return bytes(data)


class CaseTimeout(Exception):
    """A single case ran longer than CASE_TIMEOUT_S: a hang."""


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise CaseTimeout(f"one case took longer than {CASE_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[Seed]:
    return build_seeds(tmp_path_factory.mktemp("seeds"))


@pytest.fixture
def alarm() -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_seeds_are_taken_and_restored(tmp_path, seeds):
    """Control: every unmutated seed is a checkpoint chunkd takes and restores exactly."""
    with ChunkStore.open_writer(tmp_path / "c.db") as store:
        for i, seed in enumerate(seeds, start=1):
            path = tmp_path / f"{seed.name}.pth"
            path.write_bytes(seed.data)
            ingest_file(path, store, IngestOptions(), round_num=i)
            out = io.BytesIO()
            restore_round(store, i, out.write)
            assert out.getvalue() == seed.data, seed.name


def test_mutated_checkpoints_are_taken_exactly_or_refused(tmp_path, seeds, torture, figures, alarm):
    cases = 10_000 if torture else 300
    outcomes: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    slowest = [0.0]
    path = tmp_path / "case.pth"
    options = IngestOptions(chunk_num=4, max_chunk_bytes=4096)
    started = time.monotonic()
    with (
        ChunkStore.open_writer(tmp_path / "fuzz.db") as store,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):

        @settings(
            max_examples=cases,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(mutations(seeds))
        def run(case: tuple[str, str, bytes]) -> None:
            _seed_name, kind, data = case
            path.write_bytes(data)
            kinds[kind] += 1
            began = time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT_S)
            try:
                ingest_file(path, store, options, round_num=1, pool=pool)
                out = io.BytesIO()
                restore_round(store, 1, out.write)
            except CheckpointError as e:
                outcomes[f"rejected:{type(e).__name__}"] += 1
                return
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                slowest[0] = max(slowest[0], time.monotonic() - began)
            assert out.getvalue() == data, "a taken file does not restore byte-identical"
            outcomes["taken"] += 1

        run()
    total = sum(outcomes.values())
    figures.update(
        cases=total,
        outcomes=dict(outcomes),
        kinds=dict(kinds),
        slowest_case_s=round(slowest[0], 3),
        duration_s=round(time.monotonic() - started, 1),
        seeds=[s.name for s in seeds],
    )
    figures.save()
    assert total >= cases * 0.95, f"hypothesis ran only {total} of {cases} cases"
    assert outcomes["taken"] > 0 and total - outcomes["taken"] > 0


def non_cp437_member(good: bytes) -> bytes:
    """A member whose UTF-8 name (flag 0x800) has no cp437 spelling, and whose local header
    names something else: the shape of the crash atheris found (``crash-926bda20...``)."""
    members = read_members(good)
    top = next(iter(members)).split("/")[0]
    entries = [RawEntry(name.encode(), data) for name, data in members.items()]
    odd = f"{top}/\u048b".encode()
    entries.append(RawEntry(odd, b"x", flags=0x800, local_name=f"{top}/xx".encode()))
    return build_raw_zip(entries)


def test_member_name_outside_cp437_is_a_clean_rejection(tmp_path, seeds):
    """Regression (found by atheris in this campaign): pthzip.check_local_name encoded the name
    as cp437 unguarded, and UnicodeEncodeError escaped the reader as an internal error."""
    path = tmp_path / "model_round_2.pth"
    path.write_bytes(non_cp437_member(seeds[0].data))
    with ChunkStore.open_writer(tmp_path / "c.db") as store:
        with pytest.raises(CheckpointError):
            ingest_file(path, store, IngestOptions())
        assert store.round_numbers() == []


# -- atheris (coverage-guided), when it is installed -------------------------------------------

ATHERIS_HARNESS = Path(__file__).with_name("atheris_reader.py")


def test_atheris_coverage_guided_reader(tmp_path, seeds, torture, figures):
    """libFuzzer over ``parse_checkpoint`` (in memory, memfd), seeded with the real files."""
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    runs = 2_000_000 if torture else 20_000
    # CI replays one fixed libFuzzer seed (a finding there reproduces); the full run explores.
    fixed_seed = [] if torture else ["-seed=20261129"]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for seed in seeds:
        (corpus / seed.name).write_bytes(seed.data)
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            str(ATHERIS_HARNESS),
            f"-runs={runs}",
            *fixed_seed,
            f"-timeout={CASE_TIMEOUT_S}",
            "-rss_limit_mb=2048",
            "-max_len=262144",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=3000 if torture else 240,
        check=False,
        cwd=tmp_path,
    )
    stats = [line for line in done.stderr.splitlines() if "DONE" in line or "Done " in line]
    figures.update(
        runs=runs,
        exit_code=done.returncode,
        libfuzzer=stats,
        duration_s=round(time.monotonic() - started, 1),
    )
    figures.save()
    crashes = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-"))]
    assert done.returncode == 0, f"atheris found {crashes}:\n{done.stderr[-3000:]}"
