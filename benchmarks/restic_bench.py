"""restic (the Debian package) on the same inputs: a local repository, ``--compression auto``.

restic is the reference for "content-defined chunking + dedup + compression done well": if chunkd
stores a series in more bytes than restic, the flat-index chunking is leaving savings behind; if
it ingests slower, the overhead is ours. Each series round is backed up as its own snapshot of
that one file, as a cron job after each round would. Stored bytes are the repository directory's
file sizes. Restores are followed by an ``fsync`` of the restored file (restic does not sync), so
they compare with chunkd's restores, which do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

PASSWORD = "chunkd-bench"


def unavailable_reason() -> str | None:
    if shutil.which("restic") is None:
        return "restic is not installed (apt-get install restic)"
    return None


def version() -> str:
    out = subprocess.run(["restic", "version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


class Repo:
    """A local restic repository in ``path`` with its cache beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {
            **os.environ,
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_CACHE_DIR": str(path.parent / f"{path.name}.cache"),
        }
        shutil.rmtree(path, ignore_errors=True)
        self._run("init", "--repository-version", "2")

    def _run(self, *args: str) -> float:
        started = time.perf_counter()
        proc = subprocess.run(
            ["restic", "-r", str(self.path), "--compression", "auto", "--quiet", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"restic {args[0]} failed: {proc.stderr.strip()[-500:]}")
        return time.perf_counter() - started

    def backup(self, file: Path) -> float:
        os.sync()  # as before every measured operation (see benchmarks.runner.run_json)
        return self._run("backup", "--host", "bench", str(file))

    def restore_latest(self, target: Path) -> tuple[float, Path]:
        shutil.rmtree(target, ignore_errors=True)
        os.sync()
        started = time.perf_counter()
        self._run("restore", "latest", "--target", str(target))
        restored = [p for p in target.rglob("*") if p.is_file()]
        for p in restored:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return time.perf_counter() - started, restored[0]

    def forget_keep_last(self, n: int) -> float:
        """Drop all but the ``n`` newest snapshots and their data (chunkd's keep-N).

        Grouped by host only: each round is a snapshot of a different file, and restic's default
        grouping (host and paths) would make every snapshot its own group, all of them kept."""
        return self._run("forget", "--group-by", "host", "--keep-last", str(n), "--prune")

    def stored_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        shutil.rmtree(self.path.parent / f"{self.path.name}.cache", ignore_errors=True)


def measure_checkpoint(work: Path, file: Path) -> dict[str, object]:
    """Back up one checkpoint into a fresh repository and restore it."""
    repo = Repo(work / "restic_ckpt")
    try:
        size = file.stat().st_size
        backup_s = repo.backup(file)
        stored = repo.stored_bytes()
        restore_s, restored = repo.restore_latest(work / "restic_restore")
        identical = _same_bytes(file, restored)
        shutil.rmtree(work / "restic_restore", ignore_errors=True)
    finally:
        repo.remove()
    return {
        "bytes_in": size,
        "backup_seconds": backup_s,
        "backup_mb_per_s": size / 1e6 / backup_s,
        "restore_seconds": restore_s,
        "restore_mb_per_s": size / 1e6 / restore_s,
        "stored_bytes": stored,
        "byte_identical": identical,
    }


def run_series(work: Path, files: Sequence[Path]) -> dict[str, object]:
    repo = Repo(work / "restic_series")
    rounds = []
    try:
        for file in files:
            before = repo.stored_bytes()
            seconds = repo.backup(file)
            after = repo.stored_bytes()
            rounds.append(
                {
                    "bytes_in": file.stat().st_size,
                    "seconds": seconds,
                    "growth_bytes": after - before,
                    "stored_bytes": after,
                }
            )
    finally:
        repo.remove()
    return {"rounds": rounds, "stored_bytes": rounds[-1]["stored_bytes"] if rounds else 0}


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(8 << 20), fb.read(8 << 20)
            if x != y:
                return False
            if not x:
                return True
