"""The machine's limits, measured in the same run as chunkd so that ratios are like for like.

* SHA-256: ``hashlib`` over 1 MiB buffers, one thread and one thread per core (hashlib releases
  the GIL), because chunkd hashes every byte twice (chunk hash, whole-file hash);
* SQLite: 1 MiB blobs inserted durably (``synchronous=FULL``, a commit every 32 MiB as chunkd
  does) for every page size x journal mode in :data:`PAGE_SIZES` x :data:`JOURNAL_MODES`; the
  best combination is the ceiling for an ingest that must land every byte in SQLite;
* file write + fsync, and copying a real checkpoint to a new file + fsync (user-space 1 MiB
  ``read``/``write``, and the kernel's ``copy_file_range`` via :func:`shutil.copyfile`), the
  ceiling for a restore that must produce the same bytes in a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MIB = 1 << 20
BLOB_BYTES = MIB
BATCH_BYTES = 32 * MIB
PAGE_SIZES = (4096, 16384, 65536)
JOURNAL_MODES = ("DELETE", "TRUNCATE", "WAL")


def _rate(nbytes: int, seconds: float) -> dict[str, float]:
    return {"bytes": nbytes, "seconds": seconds, "mb_per_s": nbytes / 1e6 / seconds}


def sha256_throughput(total_bytes: int, threads: int = 1) -> dict[str, float]:
    buf = os.urandom(BLOB_BYTES)
    per_thread = max(1, total_bytes // BLOB_BYTES // threads)

    def work() -> None:
        for _ in range(per_thread):
            hashlib.sha256(buf).digest()

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(work) for _ in range(threads)]:
            f.result()
    return _rate(per_thread * threads * BLOB_BYTES, time.perf_counter() - started)


def _remove_db(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def sqlite_insert(
    directory: Path, total_bytes: int, page_size: int, journal_mode: str
) -> dict[str, object]:
    """Durable inserts of 1 MiB blobs into a fresh database; the clock stops at the last COMMIT."""
    db = directory / f"limit_{page_size}_{journal_mode}.db"
    _remove_db(db)
    os.sync()  # start each configuration with no one else's dirty pages (see runner.run_json)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size={page_size}")
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        blob = os.urandom(BLOB_BYTES)
        count = max(1, total_bytes // BLOB_BYTES)
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        batch = 0
        for _ in range(count):
            conn.execute("INSERT INTO blobs (data) VALUES (?)", (blob,))
            batch += BLOB_BYTES
            if batch >= BATCH_BYTES:
                conn.execute("COMMIT")
                conn.execute("BEGIN IMMEDIATE")
                batch = 0
        conn.execute("COMMIT")
        seconds = time.perf_counter() - started
    finally:
        conn.close()
        _remove_db(db)
    return {
        "page_size": page_size,
        "journal_mode": journal_mode,
        **_rate(count * BLOB_BYTES, seconds),
    }


def sqlite_grid(directory: Path, total_bytes: int) -> dict[str, object]:
    runs = [sqlite_insert(directory, total_bytes, p, j) for p in PAGE_SIZES for j in JOURNAL_MODES]
    best = max(runs, key=lambda r: float(r["mb_per_s"]))  # type: ignore[arg-type]
    return {"runs": runs, "best": best}


def write_fsync(directory: Path, total_bytes: int) -> dict[str, float]:
    path = directory / "limit_write.bin"
    buf = os.urandom(BLOB_BYTES)
    os.sync()
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(max(1, total_bytes // BLOB_BYTES)):
            os.write(fd, buf)
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - started
    path.unlink()
    return _rate(max(1, total_bytes // BLOB_BYTES) * BLOB_BYTES, seconds)


def copy_fsync(source: Path, directory: Path) -> dict[str, object]:
    """Copy ``source`` twice (user-space loop, kernel copy), each ending with an fsync."""
    size = source.stat().st_size
    out = directory / "limit_copy.bin"
    os.sync()
    started = time.perf_counter()
    with open(source, "rb") as src, open(out, "wb", buffering=0) as dst:
        while block := src.read(BLOB_BYTES):
            dst.write(block)
        os.fsync(dst.fileno())
    user = _rate(size, time.perf_counter() - started)
    out.unlink()
    os.sync()
    started = time.perf_counter()
    shutil.copyfile(source, out)
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    kernel = _rate(size, time.perf_counter() - started)
    out.unlink()
    best = max(user["mb_per_s"], kernel["mb_per_s"])
    return {"source": str(source), "user_space": user, "kernel": kernel, "best_mb_per_s": best}


def measure_limits(directory: Path, total_bytes: int, copy_source: Path) -> dict[str, object]:
    directory.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    return {
        "sha256_1_thread": sha256_throughput(total_bytes, 1),
        f"sha256_{cores}_threads": sha256_throughput(total_bytes, cores),
        "sqlite": sqlite_grid(directory, total_bytes),
        "write_fsync": write_fsync(directory, total_bytes),
        "copy_fsync": copy_fsync(copy_source, directory),
    }
