"""Codec comparison on the real FedAvg trajectory (:mod:`benchmarks.trajectory`), chunk by chunk.

Each candidate codes the chunks the store would make (``plan_chunks``: ``chunk_num`` 10, at most
1 MiB), self-contained and as a delta against the same flat range of (a) the previous round of the
same client, (b) round 1, (c) the same round of another client (report only: a host-wide pool is
not built). Delta transforms: XOR of the bit patterns, integer difference of the bit patterns
(wrapping, per word width), and the integer difference after mapping sign-magnitude floats onto
ordered integers (so a weight that crosses zero stays a small difference). The yardstick is the
order-0 entropy of each byte plane of the transformed words: what a per-plane entropy coder
(Huffman/FSE, as ZipNN and LMC use) would reach without modelling context.

Speeds: encode and decode MB/s of raw bytes, on one thread and over a pool of two threads (the
ingest pool's size); the libraries are asked for one internal thread each.

``python -m benchmarks.codec_compare [--quick] [--json OUT]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import trajectory
from chunkd import codec
from chunkd.checkpoint import parse_checkpoint, read_exact
from chunkd.flatindex import plan_chunks

Chunk = tuple[bytes, int]  # raw bytes, group width
Encoder = Callable[[bytes, int], bytes]
Decoder = Callable[[bytes, int, int], bytes]


@dataclass(frozen=True)
class Coder:
    name: str
    encode: Encoder
    decode: Decoder


def load_rounds(directory: Path, dtype: str, client: int) -> list[list[Chunk]]:
    """Every round's chunks of one client, cut exactly as ingest cuts them."""
    out = []
    for path in trajectory.files(directory, dtype, client):
        fd = os.open(path, os.O_RDONLY)
        try:
            parsed = parse_checkpoint(fd, os.fstat(fd).st_size)
            slots = {s.name: s for s in parsed.storages}
            chunks = []
            for spec in plan_chunks(parsed.storages, 10, 1 << 20):
                raw = b"".join(
                    read_exact(
                        fd,
                        slots[p.name].file_offset + p.flat_start * p.itemsize,
                        p.nbytes,
                    )
                    for p in spec.parts
                )
                width = codec.group_width(spec.itemsizes())
                chunks.append((raw, width))
            out.append(chunks)
        finally:
            os.close(fd)
    return out


# -- transforms -----------------------------------------------------------------------------------


def _words(buf: bytes, w: int) -> tuple[np.ndarray, bytes]:
    body = len(buf) - len(buf) % w
    return np.frombuffer(buf, dtype=f"<u{w}", count=body // w), buf[body:]


def t_xor(raw: bytes, base: bytes, w: int) -> bytes:
    return codec.xor_bytes(raw, base)


def t_sub(raw: bytes, base: bytes, w: int) -> bytes:
    a, tail = _words(raw, w)
    b, btail = _words(base, w)
    return (a - b).tobytes() + codec.xor_bytes(tail, btail)


def _ordered(x: np.ndarray, w: int) -> np.ndarray:
    sign = np.array(1 << (8 * w - 1), dtype=x.dtype)
    return np.where(x & sign, ~x, x | sign)


def t_osub(raw: bytes, base: bytes, w: int) -> bytes:
    a, tail = _words(raw, w)
    b, btail = _words(base, w)
    return (_ordered(a, w) - _ordered(b, w)).tobytes() + codec.xor_bytes(tail, btail)


TRANSFORMS: dict[str, Callable[[bytes, bytes, int], bytes]] = {
    "xor": t_xor,
    "sub": t_sub,
    "osub": t_osub,
}


# -- coders ---------------------------------------------------------------------------------------


def _zstd(level: int) -> Coder:
    import threading

    import zstandard

    local = threading.local()  # zstd contexts are not thread-safe: one per thread

    def ctx() -> Any:
        if not hasattr(local, "c"):
            local.c = zstandard.ZstdCompressor(level=level)
            local.d = zstandard.ZstdDecompressor()
        return local

    return Coder(
        f"numpy group + zstd {level}",
        lambda b, w: ctx().c.compress(codec.group_bytes(b, w)),
        lambda c, w, n: codec.ungroup_bytes(ctx().d.decompress(c, max_output_size=n), w),
    )


def _zstd_planes() -> Coder:
    """chunkd's ``zp`` format (one zstd frame per byte plane) on whatever bytes it is given."""

    def enc(b: bytes, w: int) -> bytes:
        grouped = codec._grouped(np.frombuffer(b, dtype=np.uint8), w)
        if w == 1:
            return codec._compressor().compress(grouped)
        return codec._compress_planes(grouped, w)

    def dec(c: bytes, w: int, n: int) -> bytes:
        return codec.decode(f"zp{w}" if w > 1 else "bgz1", c, n)

    return Coder(f"numpy group + zstd {codec.ZSTD_LEVEL} per plane (zp)", enc, dec)


def _blosc(label: str, filters: list[Any], cname: str, clevel: int) -> Coder:
    import blosc2

    codec_id = getattr(blosc2.Codec, cname)

    def enc(b: bytes, w: int) -> bytes:
        cp = blosc2.CParams(
            typesize=w,
            clevel=clevel,
            codec=codec_id,
            filters=filters,
            filters_meta=[0] * len(filters),
            nthreads=1,
        )
        return blosc2.compress2(b, cparams=cp)

    def dec(c: bytes, w: int, n: int) -> bytes:
        return blosc2.decompress2(c, dparams=blosc2.DParams(nthreads=1))

    return Coder(f"blosc2 {label} + {cname.lower()} {clevel}", enc, dec)


def _pcodec(delta: bool) -> Coder:
    from pcodec import ChunkConfig, standalone

    kinds = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
    if not delta:  # weights as floats; bf16 has no pcodec type, so it goes as u16
        kinds.update({4: np.float32, 8: np.float64})
    config = ChunkConfig()

    def enc(b: bytes, w: int) -> bytes:
        body = len(b) - len(b) % w
        arr = np.frombuffer(b, dtype=kinds[w], count=body // w)
        return standalone.simple_compress(arr, config) + b[body:]

    def dec(c: bytes, w: int, n: int) -> bytes:
        # the tail (< w bytes) rides raw after the frame; the benchmark knows its length
        tail = n % w
        body = c[: len(c) - tail] if tail else c
        return standalone.simple_decompress(body).tobytes() + (c[len(c) - tail :] if tail else b"")

    return Coder("pcodec (deltas as uints)" if delta else "pcodec (f32; bf16 as u16)", enc, dec)


def _zipnn(dtype: str) -> Coder:
    import threading

    from zipnn import ZipNN

    local = threading.local()

    def z() -> Any:
        if not hasattr(local, "z"):
            local.z = ZipNN(method="huffman", input_format="byte", bytearray_dtype=dtype, threads=1)
        return local.z

    # zipnn 0.5.4 reorders its input in place, even an immutable ``bytes``: give it a copy
    return Coder(
        "zipnn (huffman per byte plane)",
        lambda b, w: z().compress(bytearray(b)),
        lambda c, w, n: bytes(z().decompress(c)),
    )


def entropy_bytes(buf: bytes, w: int) -> float:
    """Order-0 entropy of each byte plane (in bytes): the per-plane entropy coder's floor."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    body = len(arr) - len(arr) % w
    planes = arr[:body].reshape(-1, w).T if w > 1 else arr[None, :body]
    total = float(len(arr) - body)
    for plane in planes:
        counts = np.bincount(plane, minlength=256)
        p = counts[counts > 0] / plane.size
        total += float(-(p * np.log2(p)).sum()) * plane.size / 8
    return total


def candidates(dtype: str, quick: bool, delta: bool) -> list[Coder]:
    """The coders to compare; a library that is not installed is left out (and said so)."""
    coders = [_zstd(1), _zstd_planes(), _zstd(3)]
    if not quick:
        coders.append(_zstd(9))
    try:
        import blosc2
    except ImportError:
        print("[codec] blosc2 is not installed: left out", file=sys.stderr)
    else:
        sh, bsh, bd = blosc2.Filter.SHUFFLE, blosc2.Filter.BITSHUFFLE, blosc2.Filter.BYTEDELTA
        coders += [
            _blosc("shuffle", [sh], "ZSTD", 1),
            _blosc("shuffle", [sh], "ZSTD", 3),
            _blosc("shuffle+bytedelta", [sh, bd], "ZSTD", 1),
            _blosc("bitshuffle", [bsh], "ZSTD", 1),
            _blosc("shuffle", [sh], "LZ4", 5),
        ]
        if not quick:
            coders += [
                _blosc("shuffle", [sh], "ZSTD", 6),
                _blosc("shuffle+bytedelta", [sh, bd], "ZSTD", 5),
                _blosc("bitshuffle", [bsh], "LZ4", 5),
            ]
    coders.append(_pcodec(delta))
    if not quick:
        try:
            coders.append(_zipnn("float32" if dtype == "fp32" else "bfloat16"))
        except ImportError:
            print("[codec] zipnn is not installed: left out", file=sys.stderr)
    return coders


def chunkd_rows(rounds: list[list[Chunk]]) -> list[dict[str, Any]]:
    """:mod:`chunkd.codec` itself, as the store calls it: each round against the previous one
    (``encode(raw, width, compression, base)``), round 1 on its own."""
    pairs = [(raw, w, None) for raw, w in rounds[0]]
    pairs += [
        (raw, w, base)
        for prev, cur in itertools.pairwise(rounds)
        for (raw, w), (base, _) in zip(cur, prev, strict=True)
    ]
    raw_bytes = sum(len(r) for r, _, _ in pairs)
    rows = []
    for compression in ("auto", "max"):
        enc = lambda p, c=compression: codec.encode(p[0], p[1], c, p[2])  # noqa: E731
        t0, c0 = time.perf_counter(), time.thread_time()
        coded = [enc(p) for p in pairs]
        enc_s, enc_cpu = time.perf_counter() - t0, time.thread_time() - c0
        with ThreadPoolExecutor(2) as pool:
            t0, c0 = time.perf_counter(), _process_cpu()
            list(pool.map(enc, pairs))
            enc2_s, enc2_cpu = time.perf_counter() - t0, _process_cpu() - c0
            work = list(zip(pairs, coded, strict=True))

            def dec(item: tuple[tuple[bytes, int, bytes | None], tuple[str, Any]]) -> bytes:
                (raw, _, base), (name, data) = item
                return codec.decode(name, bytes(data), len(raw), base)

            t0, c0 = time.perf_counter(), time.thread_time()
            decoded = [dec(x) for x in work]
            dec_s, dec_cpu = time.perf_counter() - t0, time.thread_time() - c0
            t0, c0 = time.perf_counter(), _process_cpu()
            list(pool.map(dec, work))
            dec2_s, dec2_cpu = time.perf_counter() - t0, _process_cpu() - c0
        if decoded != [r for r, _, _ in pairs]:
            raise AssertionError(f"chunkd.codec {compression} does not round-trip")
        names = sorted({name for name, _ in coded})
        rows.append(
            {
                "mode": "chain",
                "transform": "-",
                "coder": f"chunkd.codec {compression!r} ({', '.join(names)})",
                "ratio": sum(len(d) for _, d in coded) / raw_bytes,
                "enc_mb_s": raw_bytes / 1e6 / enc_s,
                "enc2_mb_s": raw_bytes / 1e6 / enc2_s,
                "dec_mb_s": raw_bytes / 1e6 / dec_s,
                "dec2_mb_s": raw_bytes / 1e6 / dec2_s,
                "enc_cpu_mb_s": raw_bytes / 1e6 / max(enc_cpu, 1e-9),
                "dec_cpu_mb_s": raw_bytes / 1e6 / max(dec_cpu, 1e-9),
                # CPU-seconds per wall second over the two threads: near 2 = both cores busy
                # (the GIL released), near 1 = serialized
                "enc2_parallelism": enc2_cpu / enc2_s,
                "dec2_parallelism": dec2_cpu / dec2_s,
            }
        )
    return rows


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- measurement ----------------------------------------------------------------------------------


def _inputs(
    rounds: list[list[Chunk]], other: list[list[Chunk]], mode: str, transform: str
) -> list[Chunk]:
    """The byte strings a coder sees for ``mode`` (self, prev, first, cross) and a transform."""
    if mode == "self":
        return [c for r in rounds for c in r]
    fn = TRANSFORMS[transform]
    out = []
    for i, chunks in enumerate(rounds):
        if mode == "prev" and i == 0:
            continue
        if mode == "first" and i == 0:
            continue
        bases = {"prev": rounds[i - 1], "first": rounds[0], "cross": other[i]}[mode]
        for (raw, w), (base, _) in zip(chunks, bases, strict=True):
            out.append((fn(raw, base, w) if len(base) == len(raw) else raw, w))
    return out


def measure(coder: Coder, inputs: list[Chunk], threads: bool) -> dict[str, float]:
    raw_bytes = sum(len(b) for b, _ in inputs)
    t0, c0 = time.perf_counter(), time.thread_time()
    packed = [coder.encode(b, w) for b, w in inputs]
    enc_s, enc_cpu = time.perf_counter() - t0, time.thread_time() - c0
    decoded = []
    t0, c0 = time.perf_counter(), time.thread_time()
    for (b, w), c in zip(inputs, packed, strict=True):
        decoded.append(coder.decode(c, w, len(b)))
    dec_s, dec_cpu = time.perf_counter() - t0, time.thread_time() - c0
    if decoded != [b for b, _ in inputs]:
        raise AssertionError(f"{coder.name} does not round-trip")
    row = {
        "ratio": sum(len(c) for c in packed) / raw_bytes,
        "enc_mb_s": raw_bytes / 1e6 / enc_s,
        "dec_mb_s": raw_bytes / 1e6 / dec_s,
        # per CPU-second of the coding thread: what one dedicated core would do; the wall-clock
        # figures on a shared machine are lower by however much of a core others took
        "enc_cpu_mb_s": raw_bytes / 1e6 / max(enc_cpu, 1e-9),
        "dec_cpu_mb_s": raw_bytes / 1e6 / max(dec_cpu, 1e-9),
    }
    if threads:
        with ThreadPoolExecutor(2) as pool:
            t0 = time.perf_counter()
            list(pool.map(lambda x: coder.encode(*x), inputs))
            row["enc2_mb_s"] = raw_bytes / 1e6 / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            pairs = zip(inputs, packed, strict=True)
            list(pool.map(lambda x: coder.decode(x[1], x[0][1], len(x[0][0])), pairs))
            row["dec2_mb_s"] = raw_bytes / 1e6 / (time.perf_counter() - t0)
    return row


def run(
    directory: Path, quick: bool, settings: trajectory.Settings | None = None
) -> dict[str, Any]:
    """Every candidate on the trajectory in ``directory`` (made with ``settings`` if missing;
    an existing one is used as it is when ``settings`` is None)."""
    meta_path = directory / "meta.json"
    if settings is None and meta_path.exists():
        meta = json.loads(meta_path.read_text())
    else:
        meta = trajectory.ensure(directory, settings)
    results: dict[str, Any] = {
        "trajectory": {k: v for k, v in meta.items() if k != "changed"},
        "quick": quick,
        "loadavg_before": os.getloadavg(),
    }
    modes = [("self", "-")] + [
        (m, t) for m in ("prev", "first", "cross") for t in ("xor", "sub", "osub")
    ]
    if quick:
        modes = [("self", "-"), ("prev", "xor"), ("prev", "sub"), ("cross", "sub")]
    for dtype in trajectory.DTYPES:
        rounds = load_rounds(directory, dtype, 0)
        other = load_rounds(directory, dtype, 1)
        rows = []
        for mode, transform in modes:
            inputs = _inputs(rounds, other, mode, transform)
            raw_bytes = sum(len(b) for b, _ in inputs)
            ent = sum(entropy_bytes(b, w) for b, w in inputs) / raw_bytes
            rows.append({"mode": mode, "transform": transform, "coder": "entropy", "ratio": ent})
            for coder in candidates(dtype, quick or mode == "cross", mode != "self"):
                row = measure(coder, inputs, threads=mode in ("self", "prev"))
                rows.append({"mode": mode, "transform": transform, "coder": coder.name, **row})
                print(f"[codec] {dtype} {mode:5} {transform:4} {coder.name:40} {row}", flush=True)
        for row in chunkd_rows(rounds):
            rows.append(row)
            print(f"[codec] {dtype} {row}", flush=True)
        results[dtype] = rows
    results["loadavg_after"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dir", type=Path, default=trajectory.DEFAULT_DIR)
    p.add_argument("--json", type=Path, default=trajectory.DEFAULT_DIR.parent / "codecs.json")
    p.add_argument(
        "--chunkd-only",
        action="store_true",
        help="re-measure only chunkd.codec's rows, in place in an existing --json",
    )
    args = p.parse_args(argv)
    if args.chunkd_only:
        results = json.loads(args.json.read_text())
        for dtype in trajectory.DTYPES:
            kept = [r for r in results[dtype] if r["mode"] != "chain"]
            results[dtype] = kept + chunkd_rows(load_rounds(args.dir, dtype, 0))
    else:
        results = run(args.dir, args.quick)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
