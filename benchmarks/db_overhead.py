"""On-disk overhead of a client database for small and large models (issue 11: a 2 KB checkpoint
must not cost 64 KiB pages).

Run: ``python -m benchmarks.db_overhead``. For each model size it ingests a real ``torch.save``
state_dict into a fresh database with the default configuration, then a second round with one
layer changed, and prints the database file's size over the checkpoint's, the empty-database
floor, and what the second round added on disk beyond its new chunk bytes (per-round overhead).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def _model(nbytes: int, seed: int):
    import torch

    torch.manual_seed(seed)
    if nbytes <= 4096:
        return torch.nn.Linear(16, 24).state_dict()  # ~1.6 KB of weights, ~2 KB file
    width = int((nbytes / 4 / 4) ** 0.5)
    layers = [torch.nn.Linear(width, width) for _ in range(4)]
    return torch.nn.Sequential(*layers, torch.nn.BatchNorm1d(width)).state_dict()


def measure(nbytes: int, work: Path) -> dict[str, float]:
    import torch

    from benchmarks import configs
    from chunkd.ingest import ingest_file
    from chunkd.store import ChunkStore

    options = configs.options()  # the embedded defaults
    configs.prepare_cache(options)
    db = work / f"client_{nbytes}_chunks.db"
    first, second = work / f"m{nbytes}_round_1.pth", work / f"m{nbytes}_round_2.pth"
    state = _model(nbytes, 0)
    torch.save(state, first)
    key = next(iter(state))
    state[key] = state[key] + 1
    torch.save(state, second)
    ChunkStore.open_writer(db).close()
    floor = db.stat().st_size
    with ChunkStore.open_writer(db) as store:
        ingest_file(first, store, options)
        after_one = db.stat().st_size
        result = ingest_file(second, store, options)
        after_two = db.stat().st_size
        page = store._conn.execute("PRAGMA page_size").fetchone()[0]
    size = first.stat().st_size
    return {
        "checkpoint_bytes": size,
        "page_size": page,
        "empty_db_bytes": floor,
        "db_over_checkpoint_1_round": after_one / size,
        "second_round_overhead_bytes": after_two - after_one - result.bytes_new,
    }


def run(work: Path, quick: bool) -> list[dict[str, float]]:
    sizes = (2048, 1 << 20) if quick else (2048, 1 << 20, 256 << 20)
    scratch = work / "overhead"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        return [measure(n, scratch) for n in sizes]
    finally:
        for p in scratch.iterdir():
            p.unlink()
        scratch.rmdir()


def render(result: object) -> str:
    if not isinstance(result, list):
        return f"\n## Database overhead by model size\n\nnot measured: {result}\n"
    lines = [
        "",
        "## Database overhead by model size (`python -m benchmarks.db_overhead`)",
        "",
        "One round of a real `torch.save` state_dict into a new database with the default"
        " configuration; `round +` is what a second round added on disk beyond its new chunks.",
        "",
        "| checkpoint | page size | empty database | database / checkpoint | round + |",
        "|---:|---:|---:|---:|---:|",
    ]
    for f in result:
        lines.append(
            f"| {f['checkpoint_bytes']:,} B | {f['page_size']:,} | {f['empty_db_bytes']:,} B"
            f" | {f['db_over_checkpoint_1_round']:.3f} | {f['second_round_overhead_bytes']:,} B |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2048,1048576,268435456", help="model sizes in bytes")
    args = parser.parse_args()
    print(f"{'model':>12} {'page':>6} {'empty db':>9} {'db/pth':>7} {'round+':>9}")
    with tempfile.TemporaryDirectory(prefix="chunkd-overhead-") as tmp:
        for nbytes in (int(s) for s in args.sizes.split(",")):
            f = measure(nbytes, Path(tmp))
            print(
                f"{f['checkpoint_bytes']:>12,} {f['page_size']:>6} {f['empty_db_bytes']:>9,}"
                f" {f['db_over_checkpoint_1_round']:>7.3f} {f['second_round_overhead_bytes']:>9,}"
            )


if __name__ == "__main__":
    main()
