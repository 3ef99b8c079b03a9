"""A seed-style store, reimplemented minimally, to measure chunkd against what it replaces.

What the seed did, step by step: ``torch.load`` the whole checkpoint, turn every tensor into a
flat numpy array, cut the flat index into ``chunk_num`` (10) chunks, ``pickle`` each chunk's
``{key: array slice}``, name it by the SHA-256 of the pickle, ``INSERT OR IGNORE`` it into SQLite
with default settings (4 KiB pages, rollback journal, one transaction per round); restore =
unpickle every chunk, reassemble the tensors, ``torch.save``. It holds the whole model (and a
pickle of each chunk) in memory, and its restore is not byte-identical (a fresh ``torch.save``).

numpy has no bfloat16: the seed's ``.numpy()`` would raise on a bfloat16 tensor; here bfloat16 is
carried as int16 bit patterns so the baseline can run on the same inputs.

Runs in a child process like :mod:`benchmarks.chunkd_lib` (``python -m benchmarks.seed_baseline``)
so its memory is its own; unlike chunkd it needs torch, and that is part of its cost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.memory import PeakSampler
from benchmarks.runner import emit, module_argv, run_json

MODULE = "benchmarks.seed_baseline"
CHUNK_NUM = 10
_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunk_metadata (id INTEGER PRIMARY KEY AUTOINCREMENT,
  round_num INTEGER NOT NULL, chunk_id INTEGER NOT NULL, chunk_hash TEXT NOT NULL,
  parts_info TEXT NOT NULL, flat_size INTEGER NOT NULL,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, UNIQUE(round_num, chunk_id));
CREATE TABLE IF NOT EXISTS chunk_data (id INTEGER PRIMARY KEY AUTOINCREMENT,
  chunk_hash TEXT UNIQUE NOT NULL, data BLOB NOT NULL,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX IF NOT EXISTS idx_chunk_metadata_round ON chunk_metadata(round_num);
CREATE INDEX IF NOT EXISTS idx_chunk_metadata_hash ON chunk_metadata(chunk_hash);
"""


# -- parent side ---------------------------------------------------------------------------------
def measure_ingest(db: Path, file: Path, round_num: int) -> dict[str, object]:
    return run_json(
        module_argv(
            MODULE, "ingest", "--db", str(db), "--file", str(file), "--round", str(round_num)
        )
    )


def measure_restore(db: Path, round_num: int, out: Path) -> dict[str, object]:
    return run_json(
        module_argv(
            MODULE, "restore", "--db", str(db), "--round", str(round_num), "--out", str(out)
        )
    )


def run_series(db: Path, files: Sequence[tuple[int, Path]]) -> dict[str, object]:
    args = ["series", "--db", str(db)]
    for round_num, path in files:
        args += ["--file", f"{round_num}={path}"]
    return run_json(module_argv(MODULE, *args))


# -- child side: the seed's algorithm ------------------------------------------------------------
def _connect(db: str) -> sqlite3.Connection:
    conn = sqlite3.connect(db)
    conn.executescript(_SCHEMA)
    return conn


def _to_numpy(tensor: object):
    import torch  # lazily: the module must import in torch-free processes

    assert isinstance(tensor, torch.Tensor)
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().reshape(-1)


def seed_ingest(path: str, conn: sqlite3.Connection, round_num: int) -> int:
    """One round, the seed's way; returns the number of new chunk rows."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    arrays = {
        k: (_to_numpy(v), list(v.shape)) for k, v in state.items() if isinstance(v, torch.Tensor)
    }
    starts, total = {}, 0
    for key, (arr, _shape) in arrays.items():
        starts[key] = total
        total += arr.size
    new = 0
    n = min(CHUNK_NUM, total)
    for chunk_id in range(n):
        lo, hi = chunk_id * total // n, (chunk_id + 1) * total // n
        data, parts = {}, {}
        for key, (arr, shape) in arrays.items():
            s0 = starts[key]
            a, b = max(lo, s0), min(hi, s0 + arr.size)
            if a < b:
                data[key] = arr[a - s0 : b - s0]
                parts[key] = [(a - s0, b - s0, shape)]
        blob = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        digest = hashlib.sha256(blob).hexdigest()
        cur = conn.execute(
            "INSERT OR IGNORE INTO chunk_data (chunk_hash, data) VALUES (?, ?)", (digest, blob)
        )
        new += cur.rowcount
        conn.execute(
            "INSERT OR REPLACE INTO chunk_metadata (round_num, chunk_id, chunk_hash, parts_info,"
            " flat_size) VALUES (?, ?, ?, ?, ?)",
            (round_num, chunk_id, digest, json.dumps(parts), hi - lo),
        )
    conn.commit()
    return new


def seed_restore(conn: sqlite3.Connection, round_num: int, out: str) -> None:
    import numpy as np
    import torch

    pieces: dict[str, list[object]] = {}
    shapes: dict[str, list[int]] = {}
    rows = conn.execute(
        "SELECT m.parts_info, d.data FROM chunk_metadata m JOIN chunk_data d"
        " ON d.chunk_hash = m.chunk_hash WHERE m.round_num = ? ORDER BY m.chunk_id",
        (round_num,),
    ).fetchall()
    for parts_info, blob in rows:
        data = pickle.loads(blob)  # the seed's way; chunkd never does this
        for key, ranges in json.loads(parts_info).items():
            pieces.setdefault(key, []).append(data[key])
            shapes[key] = ranges[0][2]
    state = {}
    for key, arrs in pieces.items():
        flat = np.concatenate(arrs)  # type: ignore[arg-type]
        t = torch.from_numpy(flat).reshape(shapes[key])
        state[key] = t
    torch.save(state, out)
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _import_torch() -> None:
    """Load torch before the clock starts: a seed client has it loaded already (its memory,
    though, is the seed's, so the sampler is running by then)."""
    import torch  # noqa: F401


def _ingest(args: argparse.Namespace) -> dict[str, object]:
    size = Path(args.file).stat().st_size
    with PeakSampler() as sampler:
        _import_torch()
        started = time.perf_counter()
        conn = _connect(args.db)
        new = seed_ingest(args.file, conn, args.round)
        conn.close()
        seconds = time.perf_counter() - started
    return {
        "op": "ingest",
        "bytes_in": size,
        "seconds": seconds,
        "mb_per_s": size / 1e6 / seconds,
        "chunks_new": new,
        "db_file_bytes": Path(args.db).stat().st_size,
        "rss_anon_peak_kib": sampler.peak_kib,
        "rss_anon_baseline_kib": sampler.baseline_kib,
    }


def _restore(args: argparse.Namespace) -> dict[str, object]:
    with PeakSampler() as sampler:
        _import_torch()
        started = time.perf_counter()
        conn = _connect(args.db)
        seed_restore(conn, args.round, args.out)
        conn.close()
        seconds = time.perf_counter() - started
    size = Path(args.out).stat().st_size
    return {
        "op": "restore",
        "bytes_out": size,
        "seconds": seconds,
        "mb_per_s": size / 1e6 / seconds,
        "rss_anon_peak_kib": sampler.peak_kib,
        "rss_anon_baseline_kib": sampler.baseline_kib,
    }


def _series(args: argparse.Namespace) -> dict[str, object]:
    _import_torch()
    conn = _connect(args.db)
    rounds = []
    for spec in args.file:
        round_text, _, path = spec.partition("=")
        before = Path(args.db).stat().st_size
        started = time.perf_counter()
        new = seed_ingest(path, conn, int(round_text))
        rounds.append(
            {
                "round": int(round_text),
                "seconds": time.perf_counter() - started,
                "bytes_in": Path(path).stat().st_size,
                "chunks_new": new,
                "db_growth_bytes": Path(args.db).stat().st_size - before,
                "db_file_bytes": Path(args.db).stat().st_size,
            }
        )
    conn.close()
    return {"op": "series", "rounds": rounds, "db_file_bytes": Path(args.db).stat().st_size}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    sub = parser.add_subparsers(dest="op", required=True)
    ing = sub.add_parser("ingest")
    ing.add_argument("--db", required=True)
    ing.add_argument("--file", required=True)
    ing.add_argument("--round", type=int, default=1)
    res = sub.add_parser("restore")
    res.add_argument("--db", required=True)
    res.add_argument("--round", type=int, default=1)
    res.add_argument("--out", required=True)
    ser = sub.add_parser("series")
    ser.add_argument("--db", required=True)
    ser.add_argument("--file", action="append", required=True, help="ROUND=PATH")
    args = parser.parse_args(argv)
    emit({"ingest": _ingest, "restore": _restore, "series": _series}[args.op](args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
