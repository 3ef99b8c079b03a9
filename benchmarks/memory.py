"""Peak anonymous memory of a process, sampled from ``/proc/<pid>/status``.

Why sample instead of reading one number at the end: ``VmHWM`` and ``ru_maxrss`` are peaks of
*resident* memory, which counts the page-cache pages of files the process maps (SQLite, shared
libraries). chunkd's promise is about the memory it allocates, which is ``RssAnon``; the kernel
keeps no high-water mark for it, so a thread reads it every 10 ms and keeps the maximum. A
spike shorter than 10 ms can be missed; allocations here are MiB-sized buffers that live for the
length of a chunk (milliseconds) or longer, so the sampled peak is within one chunk of the truth.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

SAMPLE_INTERVAL_S = 0.010


def read_status_kib(pid: int | str = "self") -> dict[str, int]:
    """The ``kB`` fields of ``/proc/<pid>/status`` (``RssAnon``, ``VmHWM``, ``VmRSS``, ...)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields = rest.split()
                if len(fields) == 2 and fields[1] == "kB":
                    out[key] = int(fields[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def read_cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (``/proc/<pid>/stat`` fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces; everything after its closing paren splits.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


class PeakSampler:
    """Keeps the highest ``RssAnon`` of ``pid`` seen while running; a context manager.

    ``mark()`` starts a new window so one long-lived sampler (the daemon's) can attribute peaks
    to successive operations: ``window_peak_kib`` is the maximum since the last mark.
    """

    def __init__(self, pid: int | str = "self", interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.baseline_kib = read_status_kib(pid).get("RssAnon", 0)
        self.peak_kib = self.baseline_kib
        self.window_peak_kib = self.baseline_kib
        self.samples = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> int:
        value = read_status_kib(self.pid).get("RssAnon", 0)
        with self._lock:
            self.samples += 1
            self.peak_kib = max(self.peak_kib, value)
            self.window_peak_kib = max(self.window_peak_kib, value)
        return value

    def mark(self) -> None:
        with self._lock:
            self.window_peak_kib = read_status_kib(self.pid).get("RssAnon", 0)

    def start(self) -> PeakSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> PeakSampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_for(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.01) -> bool:
    """Poll ``predicate()`` until true or ``timeout_s``; the daemon's log has no push channel."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()


# -- retention under a real daemon -----------------------------------------------------------------
#
# ``python -m benchmarks.memory [--model-mib 256] [--rounds 8] [--keep 3] [--backlog 5]``
#
# A real ``chunkd serve`` (compression and delta set explicitly) takes ``--rounds`` torch.save files
# of a model whose every weight moves a little each round (FedAvg-like). The first ``--backlog``
# rounds arrive before any retention runs (a daemon catching up after downtime); after that every
# round is followed by a prune (steady state). The daemon's RssAnon is sampled throughout; each
# ingest and each prune reports its own peak, the database size against the stored bytes of the
# kept rounds, and the bytes the daemon wrote during the prune (``/proc/<pid>/io``) against the
# stored bytes it freed.


def read_io(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = int(value)
    return out


def _write_round(path: Path, weights: Any, rng: Any, torch: Any) -> None:
    """Every weight moves (SGD-like noise, ~1e-3 relative), then ``torch.save`` via a rename."""
    import numpy as np

    weights += (rng.standard_normal(weights.shape, dtype=np.float32) * 1e-3).astype(np.float32)
    tmp = path.with_name(path.name + ".part")
    half = weights.size // 2
    torch.save(
        {
            "body.weight": torch.from_numpy(weights[:half]),
            "head.weight": torch.from_numpy(weights[half:]),
        },
        tmp,
    )
    os.rename(tmp, path)


def _kept_stored_bytes(db: Path) -> tuple[int, int]:
    """(stored bytes of every chunk, stored bytes of the newest round's chunks)."""
    from chunkd.store import ChunkStore

    with ChunkStore.open_reader(db) as store:
        _, _, sizes = store.chunk_graph()
        rounds = store.list_rounds()
        newest = max(rounds, key=lambda v: v.order_key)
        refs = {r.chunk_hash for r in store.round_chunks(newest.round_num)}
    return sum(sizes.values()), sum(sizes[h] for h in refs if h in sizes)


def retention_run(args: argparse.Namespace) -> dict[str, object]:
    import numpy as np
    import torch

    from benchmarks.chunkd_daemon import CLIENT, DaemonRun

    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    daemon = DaemonRun(root / "daemon")
    settings = {
        "watch_root": str(daemon.watch_root),
        "socket": str(daemon.socket),
        "settle_delay": "0.5s",
        "compression": args.compression,
        "delta": args.delta,
        "chunk_keep_rounds": args.keep,
        "retention_interval": "3600s",
        "rescan_interval": "3600s",
        "log_format": "json",
        "log_level": "info",
    }
    daemon.config.write_text(
        "".join(
            f"{k} = {json.dumps(v) if isinstance(v, str) else str(v).lower()}\n"
            for k, v in settings.items()
        )
    )
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((args.model_mib << 20) // 4, dtype=np.float32)
    db = daemon.client_dir / f"client_{CLIENT}_chunks.db"
    steps: list[dict[str, object]] = []
    daemon.start()
    assert daemon.sampler is not None
    try:
        for round_num in range(1, args.rounds + 1):
            path = daemon.client_dir / f"model_round_{round_num}.pth"
            _write_round(path, weights, rng, torch)
            daemon.sampler.mark()
            daemon.wait_ingest(path, timeout_s=900)
            steps.append(
                {"op": f"ingest {round_num}", "peak_mib": daemon.sampler.window_peak_kib >> 10}
            )
            if round_num < args.backlog:
                continue
            os.sync()
            daemon.sampler.mark()
            before = read_io(daemon.pid)["write_bytes"]
            proc = daemon.cli("prune", "--client", CLIENT, "--json")
            written = read_io(daemon.pid)["write_bytes"] - before
            if proc.returncode != 0:
                raise RuntimeError(f"prune failed: {proc.stderr or proc.stdout}")
            result = json.loads(proc.stdout)
            entry = result["clients"][0] if "clients" in result else result
            kept, newest = _kept_stored_bytes(db)
            steps.append(
                {
                    "op": f"prune after {round_num}",
                    "peak_mib": daemon.sampler.window_peak_kib >> 10,
                    "freed_mib": round(int(entry.get("bytes_removed", 0)) / 2**20, 1),
                    "written_mib": round(written / 2**20, 1),
                    "db_mib": round(db.stat().st_size / 2**20, 1),
                    "kept_stored_mib": round(kept / 2**20, 1),
                    "newest_round_mib": round(newest / 2**20, 1),
                }
            )
            for old in daemon.client_dir.glob("model_round_*.pth"):
                old.unlink()  # the client's own files are not what is measured
            print(json.dumps(steps[-1]), file=sys.stderr, flush=True)
    finally:
        daemon.stop()
    return {
        "model_mib": args.model_mib,
        "rounds": args.rounds,
        "keep": args.keep,
        "backlog": args.backlog,
        "compression": args.compression,
        "delta": args.delta,
        "peak_rss_anon_mib": daemon.sampler.peak_kib >> 10,
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    parser.add_argument("--model-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=5, help="rounds ingested before a prune")
    parser.add_argument("--compression", default="auto")
    parser.add_argument("--delta", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    parser.add_argument("--out", default=str(Path("benchmarks/out/memory")))
    args = parser.parse_args(argv)
    print(json.dumps(retention_run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
