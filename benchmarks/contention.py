"""The store's concurrency figures (issue 13): restore during ingest, prune write cost, list cost.

Run: ``python -m benchmarks.contention [--restore-mib 128 --ingest-mib 768]``. Prints ratios against
baselines measured in the same run:

* **restore during ingest**: a round restored (to a hashing sink) while another process ingests a
  round several times its size into the same database, over the same restore on an idle store.
  The store guarantees a reader waits at most one batch commit at a time (docs/DESIGN.md).
* **prune write amplification**: at steady state (rounds of new chunks, keep 3) the bytes a prune
  writes (``/proc/self/io`` ``write_bytes``) over the bytes it frees, and the file size in rounds.
* **list cost**: bytes read by ``stats()`` + ``list_rounds()`` (``/proc/self/io`` ``rchar``) over
  the database file's size, after retention churn.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from benchmarks import configs
from chunkd.ingest import IngestOptions


def _save(path: Path, mib: int, seed: int) -> None:
    import torch

    rng = np.random.default_rng(seed)
    n = (mib << 20) // 4
    per = 1 << 22  # 16 MiB tensors, like the layers of a large model
    state = {}
    for i in range(0, n, per):
        size = min(per, n - i)
        state[f"layer{i // per}.weight"] = torch.from_numpy(
            rng.standard_normal(size, dtype=np.float32)
        )
    torch.save(state, path)


def _options() -> IngestOptions:
    """The shipped defaults, with the recent-chunk cache sized and emptied as a daemon's."""
    options = configs.options()
    configs.prepare_cache(options)
    return options


def _io(field: str) -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        if key == field:
            return int(value)
    raise KeyError(field)


def _restore_seconds(db: Path, round_num: int) -> float:
    from chunkd.restore import restore_round
    from chunkd.store import ChunkStore

    with ChunkStore.open_reader(db) as store:
        sink = hashlib.sha256()
        started = time.perf_counter()
        restore_round(store, round_num, sink.update, verify_chunks=False)  # as `-o FILE`
        return time.perf_counter() - started


_INGEST_CHILD = textwrap.dedent(
    """
    import sys
    from benchmarks import configs
    from chunkd.ingest import ingest_file
    from chunkd.store import ChunkStore

    def progress(done, total):
        if done == min(total, 64 << 20) or done >= 64 << 20 and not progress.told:
            progress.told = True
            print("streaming", flush=True)
    progress.told = False
    with ChunkStore.open_writer(sys.argv[1]) as store:
        options = configs.options()
        configs.prepare_cache(options)
        ingest_file(sys.argv[2], store, options, round_num=2, progress=progress)
    print("done", flush=True)
    """
)


def restore_during_ingest(work: Path, restore_mib: int, ingest_mib: int) -> dict[str, float]:
    """As in the daemon: the ingest on a lane thread, restores on another thread, one process
    (the fairness gate applies); then the same with the ingest in another process (an offline
    ``chunkd restore --db`` beside a daemon: SQLite's busy handler only)."""
    import threading

    from chunkd.ingest import ingest_file
    from chunkd.store import ChunkStore

    db = work / "client_1_chunks.db"
    small, big = work / "r1.pth", work / "r2.pth"
    _save(small, restore_mib, 1)
    _save(big, ingest_mib, 2)
    with ChunkStore.open_writer(db) as store:
        ingest_file(small, store, _options(), round_num=1)
    idle = min(_restore_seconds(db, 1) for _ in range(3))

    streaming = threading.Event()

    def progress(done: int, total: int) -> None:
        if done >= min(total, 64 << 20):
            streaming.set()

    def ingest() -> None:
        with ChunkStore.open_writer(db) as store:
            ingest_file(big, store, _options(), round_num=2, progress=progress)
        streaming.set()

    lane = threading.Thread(target=ingest)
    lane.start()
    streaming.wait()
    in_process = []
    while lane.is_alive() and len(in_process) < 5:
        in_process.append(_restore_seconds(db, 1))
    lane.join()
    with ChunkStore.open_writer(db) as store:
        store.delete_rounds([2])
        store.collect_garbage()
    child = subprocess.Popen(
        [sys.executable, "-c", _INGEST_CHILD, str(db), str(big)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "streaming"
    busy = []
    while child.poll() is None and len(busy) < 5:
        busy.append(_restore_seconds(db, 1))
    child.wait()
    return {
        "restore_idle_s": idle,
        "restore_busy_s": max(in_process),
        "restore_busy_median_s": sorted(in_process)[len(in_process) // 2],
        "ratio_worst": max(in_process) / idle,
        "restores_during_ingest": len(in_process),
        "other_process_busy_s": max(busy),
        "other_process_ratio_worst": max(busy) / idle,
    }


def prune_amplification(work: Path, round_mib: int, rounds: int) -> dict[str, float]:
    from chunkd.ingest import ingest_file
    from chunkd.prune import prune_store
    from chunkd.store import ChunkStore

    db = work / "steady.db"
    ratios, sizes = [], []
    with ChunkStore.open_writer(db) as store:
        for r in range(1, rounds + 1):
            path = work / f"steady_{r}.pth"
            _save(path, round_mib, 100 + r)
            ingest_file(path, store, _options(), round_num=r)
            path.unlink()
            before = _io("write_bytes")
            result = prune_store(store, 3)
            written = _io("write_bytes") - before
            if result.bytes_removed:
                ratios.append(written / result.bytes_removed)
                sizes.append(db.stat().st_size / (round_mib << 20))
        before_read = _io("rchar")
        store.stats()
        store.list_rounds()
        listed = _io("rchar") - before_read
    if not ratios:
        raise SystemExit("--rounds must exceed 3 (keep 3) for a prune to free a round")
    return {
        "prune_written_over_freed_worst": max(ratios),
        "prune_written_over_freed_median": sorted(ratios)[len(ratios) // 2],
        "db_size_in_rounds_worst": max(sizes),
        "list_read_share_of_file": listed / db.stat().st_size,
    }


def run(work: Path, quick: bool) -> dict[str, float]:
    """The figures for ``python -m benchmarks`` (small sizes with ``quick``)."""
    restore_mib, ingest_mib, round_mib, rounds = (2, 8, 1, 4) if quick else (128, 768, 128, 8)
    scratch = work / "contention"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        figures = restore_during_ingest(scratch, restore_mib, ingest_mib)
        for p in scratch.iterdir():
            p.unlink()
        figures.update(prune_amplification(scratch, round_mib, rounds))
    finally:
        for p in scratch.iterdir():
            p.unlink()
        scratch.rmdir()
    figures.update(restore_mib=restore_mib, ingest_mib=ingest_mib, round_mib=round_mib)
    return figures


def render(result: object) -> str:
    """The RESULTS.md section (issue 13's targets beside the figures)."""
    if not isinstance(result, dict) or "error" in result:
        return f"\n## Store concurrency and retention\n\nnot measured: {result}\n"
    r = result
    rows = [
        (
            f"restore {r['restore_mib']} MiB while the same client ingests {r['ingest_mib']} MiB"
            " in the same process (the daemon), worst restore over the idle restore",
            "<= 2x",
            f"{r['ratio_worst']:.2f}x ({r['restore_busy_s']:.2f} s vs {r['restore_idle_s']:.2f} s)",
        ),
        (
            "the same with the ingest in another process (an offline `restore --db` beside a"
            " daemon: no fairness gate)",
            "-",
            f"{r['other_process_ratio_worst']:.2f}x ({r['other_process_busy_s']:.2f} s)",
        ),
        (
            f"prune at steady state ({r['round_mib']} MiB rounds, keep 3): bytes written over"
            " bytes freed, worst",
            "<= 1.2x",
            f"{r['prune_written_over_freed_worst']:.3f}x",
        ),
        (
            "database file at steady state, in rounds",
            "<= 4 rounds",
            f"{r['db_size_in_rounds_worst']:.2f}",
        ),
        (
            "`stats()` + `list_rounds()`: bytes read over the database file",
            "< 1%",
            f"{100 * r['list_read_share_of_file']:.3f}%",
        ),
    ]
    lines = [
        "",
        "## Store concurrency and retention (`python -m benchmarks.contention`)",
        "",
        "| figure | target | measured |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--restore-mib", type=int, default=128)
    parser.add_argument("--ingest-mib", type=int, default=768)
    parser.add_argument("--round-mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chunkd-contention-") as tmp:
        work = Path(tmp)
        figures = restore_during_ingest(work, args.restore_mib, args.ingest_mib)
        for p in work.iterdir():
            p.unlink()
        figures.update(prune_amplification(work, args.round_mib, args.rounds))
    for key, value in figures.items():
        print(f"{key:34s} {value:10.3f}")


if __name__ == "__main__":
    main()
