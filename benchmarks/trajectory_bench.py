"""Stored bytes of a real FedAvg trajectory through the public engine, beside zstd -19 and restic.

Each client's rounds (:mod:`benchmarks.trajectory`) are ingested in order into that client's own
fresh database (``ingest_file`` on ``ChunkStore.open_writer``, as the daemon does), once per
configuration, with every round kept and with ``chunk_keep_rounds = 3`` (``prune_store`` after
each ingest, as the daemon's retention does). The figure is the database files' bytes over the
plain ``.pth`` bytes of the rounds that are kept. The kept rounds are restored and compared with
the files' SHA-256 so a figure never comes from a store that lost something.

Only the public engine API is used, so the same script re-measures whatever delta chains and
retention re-coding the store does at the time. ``default`` is the shipped configuration
(:mod:`benchmarks.configs`: ``chunkd.config.load_settings(None)``, ``delta_cache`` included).

``python -m benchmarks.trajectory_bench [--quick] [--model mlp] [--json OUT]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import configs, restic_bench, trajectory
from chunkd.ingest import IngestOptions, ingest_file
from chunkd.prune import prune_store
from chunkd.restore import restore_round
from chunkd.store import ChunkStore

KEEPS = (0, 3)
#: The MLP (FederatedScope's clients) keeps all, as in issue 18's figure; three configs suffice.
MLP_CONFIGS = ("none", "max+delta", configs.DEFAULT)
#: The smoke run: the raw store and the shipped one, keep-all and keep-3, one client.
QUICK_CONFIGS = ("none", configs.DEFAULT)


def _db_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def run_engine(
    work: Path, client_files: list[list[Path]], options: IngestOptions, keep: int
) -> dict[str, Any]:
    """Ingest each client's rounds into its own database; stored / plain over the kept rounds."""
    db_bytes = plain = ingested = payload = 0
    ingest_s = restore_s = restored = 0.0
    configs.prepare_cache(options)  # the daemon's delta_cache; nothing left by the last config
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="bench-pool") as pool:
        for c, paths in enumerate(client_files):
            db = work / f"client{c}.db"
            with ChunkStore.open_writer(db) as store:
                for path in paths:
                    t0 = time.perf_counter()
                    ingest_file(path, store, options, pool=pool)
                    if keep:
                        prune_store(store, keep)
                    ingest_s += time.perf_counter() - t0
                    ingested += path.stat().st_size
                kept = store.round_numbers()
                by_round = {int(p.stem.split("_")[-1]): p for p in paths}
                for r in kept:
                    digest = hashlib.sha256()
                    t0 = time.perf_counter()
                    result = restore_round(store, r, digest.update)
                    restore_s += time.perf_counter() - t0
                    restored += result.bytes_written
                    if digest.hexdigest() != _sha256(by_round[r]):
                        raise AssertionError(f"client {c} round {r} does not restore identical")
                plain += sum(by_round[r].stat().st_size for r in kept)
                payload += store.stats().stored_bytes
            db_bytes += _db_bytes(db)
            for p in work.glob(f"client{c}.db*"):
                p.unlink()
    return {
        "db_bytes": db_bytes,
        "plain_bytes": plain,
        "ratio": db_bytes / plain,
        # the chunks' stored bytes alone: what the codec achieved, before SQLite's page rounding
        "payload_ratio": payload / plain,
        "ingest_mb_s": ingested / 1e6 / ingest_s,
        "restore_mb_s": restored / 1e6 / restore_s,
    }


def run_zstd(client_files: list[list[Path]], keep: int) -> dict[str, Any]:
    """``tar`` of each client's kept files piped through ``zstd -19``."""
    stored = plain = 0
    for paths in client_files:
        kept = paths[-keep:] if keep else paths
        tar = subprocess.Popen(
            ["tar", "-cf", "-", "-C", str(kept[0].parent), *[p.name for p in kept]],
            stdout=subprocess.PIPE,
        )
        out = subprocess.run(
            ["zstd", "-19", "-q", "-c"], stdin=tar.stdout, capture_output=True, check=True
        )
        tar.wait()
        stored += len(out.stdout)
        plain += sum(p.stat().st_size for p in kept)
    return {"db_bytes": stored, "plain_bytes": plain, "ratio": stored / plain}


def run_restic(work: Path, client_files: list[list[Path]], keep: int) -> dict[str, Any]:
    """One restic repository per client, one snapshot per round; keep-N via ``forget --prune``."""
    stored = plain = 0
    for paths in client_files:
        repo = restic_bench.Repo(work / "restic")
        try:
            for p in paths:
                repo.backup(p)
                if keep:
                    repo.forget_keep_last(keep)
            stored += repo.stored_bytes()
        finally:
            repo.remove()
        plain += sum(p.stat().st_size for p in (paths[-keep:] if keep else paths))
    return {"db_bytes": stored, "plain_bytes": plain, "ratio": stored / plain}


def run(
    quick: bool = False,
    directory: Path = trajectory.DEFAULT_DIR,
    settings: trajectory.Settings | None = None,
    others: bool = True,
    names: tuple[str, ...] | None = None,
    keeps: tuple[int, ...] = KEEPS,
) -> dict[str, Any]:
    """``quick``: one client; ``others``: zstd -19 and restic (when installed) beside chunkd;
    ``names``: the configs (:mod:`benchmarks.configs`; all of them unless given)."""
    meta = trajectory.ensure(directory, settings)
    clients = 1 if quick else meta["settings"]["clients"]
    others = others and not quick
    names = names or (QUICK_CONFIGS if quick else configs.NAMES)
    results: dict[str, Any] = {
        "trajectory": {k: v for k, v in meta.items() if k != "changed"},
        "clients": clients,
        "defaults": {"text": configs.describe()},
        "rows": [],
    }
    work = Path(tempfile.mkdtemp(prefix="chunkd-trajbench-", dir="/tmp"))
    try:
        for dtype in trajectory.DTYPES:
            files = [trajectory.files(directory, dtype, c) for c in range(clients)]
            for keep in keeps:
                for name in names:
                    row = run_engine(work, files, configs.options(name), keep)
                    results["rows"].append({"dtype": dtype, "keep": keep, "config": name, **row})
                    print(f"[trajectory] {dtype} keep={keep} {name}: {row}", flush=True)
                baselines: dict[str, dict[str, Any]] = {}
                if others and shutil.which("zstd"):
                    baselines["zstd -19"] = run_zstd(files, keep)
                if others and restic_bench.unavailable_reason() is None:
                    baselines["restic"] = run_restic(work, files, keep)
                for name, row in baselines.items():
                    results["rows"].append({"dtype": dtype, "keep": keep, "config": name, **row})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one client, no zstd -19 or restic")
    p.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    p.add_argument("--dir", type=Path, default=None, help="default: out/trajectory[_mlp]")
    p.add_argument("--json", type=Path, default=None, help="default: out/trajectory[_mlp].json")
    args = p.parse_args(argv)
    mlp = args.model == "mlp"
    directory = args.dir or (trajectory.MLP_DIR if mlp else trajectory.DEFAULT_DIR)
    if mlp:
        results = run(args.quick, directory, trajectory.MLP, False, MLP_CONFIGS, (0,))
    else:
        results = run(args.quick, directory)
    args.json = args.json or directory.parent / f"{directory.name}.json"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
