"""Where the time goes: py-spy (``--native --threads --idle``) over one measured child process.

cProfile sees only the thread that enables it, and chunkd hashes on worker threads, so the
profile is taken by sampling every thread from outside (py-spy, ``--format raw``: one collapsed
stack and a sample count per line). Each sample is put in the first :data:`CATEGORIES` entry
whose pattern occurs anywhere in its stack, most specific first (an ``fsync`` inside SQLite's
commit counts as fsync, not as SQLite). ``--idle`` keeps the samples of blocked threads, so the
main thread's waits for the hash workers show up as "waiting for workers" instead of vanishing.
The profiled run is a separate, slower run; its figures are shares, not the timed throughput.
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path

RATE_HZ = 250
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fsync (disk flush)", ("fsync", "fdatasync")),
    ("SHA-256", ("sha256", "SHA256", "EVP_hash", "EVP_Digest")),
    ("CRC-32", ("crc32",)),
    ("zstd", ("ZSTD_", "zstd", "Zstd")),
    ("byte grouping (numpy)", ("group_bytes", "ungroup_bytes")),
    ("SQLite write (pwrite)", ("pwrite", "unixWrite")),
    ("SQLite read (pread)", ("unixRead",)),
    ("SQLite other (B-tree, page copy)", ("sqlite3", "pysqlite", "_pysqlite")),
    ("read checkpoint (preadv)", ("preadv",)),
    ("write output file", ("_write_all", "os_write", "write_all")),
    ("idle (queue empty)", ("SimpleQueue_get",)),
    (
        "waiting for workers",
        (
            "result (concurrent",
            "wait (threading",
            "_wait_for_tstate_lock",
            "acquire",
            "futex",
            "pthread_cond",
        ),
    ),
    ("interpreter start-up and imports", ("_find_and_load", "<module>")),
)
OTHER = "other Python"


def pyspy() -> str | None:
    """The py-spy executable: beside the interpreter (the venv) or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def pyspy_prefix(out: Path, rate_hz: int = RATE_HZ) -> list[str]:
    exe = pyspy()
    if exe is None:
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    return [
        exe,
        "record",
        "--native",
        "--threads",
        "--idle",
        "--rate",
        str(rate_hz),
        "--format",
        "raw",
        "-o",
        str(out),
        "--",
    ]


def _role(stack: str) -> str:
    """The thread's name without its pool index (``chunkd-hash_1`` -> ``chunkd-hash``)."""
    if "PeakSampler" in stack:  # py-spy does not always know a thread's name
        return "rss-sampler"
    head = stack.split(";", 1)[0]
    name = head.partition("): ")[2].strip() or "main thread"
    if name == "MainThread":
        return "main thread"
    base, _, index = name.rpartition("_")
    return base if base and index.isdigit() else name


def _category(stack: str) -> str:
    for name, patterns in CATEGORIES:
        if any(p in stack for p in patterns):
            return name
    return OTHER


def summarize(raw: Path, rate_hz: int = RATE_HZ) -> dict[str, dict[str, float]]:
    """``{role: {category: seconds}}`` from a py-spy raw file (samples / rate)."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        role = _role(stack)
        if role == "rss-sampler":
            continue
        out[role][_category(stack)] += int(count)
    return {role: {cat: n / rate_hz for cat, n in cats.most_common()} for role, cats in out.items()}


def top_leaf_functions(
    raw: Path, role: str, limit: int = 8, rate_hz: int = RATE_HZ
) -> list[tuple[str, float]]:
    """The innermost Python-or-native frames that collect the most samples in ``role``."""
    leaves: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or _role(stack) != role:
            continue
        frames = [f for f in stack.split(";") if not f.startswith("thread (")]
        leaf = frames[-1] if frames else "?"
        leaves[leaf.split(" (")[0]] += int(count)
    return [(name, n / rate_hz) for name, n in leaves.most_common(limit)]
