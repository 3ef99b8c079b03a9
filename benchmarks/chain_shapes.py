"""Where delta chains put their key chunks: stored bytes and work, on a real FedAvg trajectory.

Why: a delta costs the same whichever way it points (XOR is symmetric), so what a chain shape
decides is where the self-contained key chunks fall, and that decides the work: forward chains
(chunkd 0.2) key the oldest kept round, which retention removes first, so every prune re-codes a
chain start and ``latest`` decodes deltas; reverse chains keep the newest round whole and pay one
re-code per chunk at ingest instead. docs/DESIGN.md "Reverse delta chains" cites these figures.

Method: a **model over real codec outputs**, not the engine. Each client's rounds of
:mod:`benchmarks.trajectory` are cut exactly as ingest cuts them (``parse_checkpoint``,
``plan_chunks`` with the defaults, parts read as
``chunkd.ingest_pipeline.stream_round`` reads them);
every chunk is coded with :func:`chunkd.codec.encode` on its own (key), against the same chunk_id
of the previous round (forward delta) and of the next round (reverse delta). Both directions are
coded, so the model needs no symmetry assumption; the table reports how far they differ. The
policies then replay ingest + retention (``keep`` newest rounds, orphaned deltas re-coded as keys
after every prune, as ``prune_store`` does) over those sizes. Figures, per policy and keep:

* ``stored``: chunk bytes / plain ``.pth`` bytes of the kept rounds after the last round (the
  chunk-payload figure of ``benchmarks/trajectory_bench.py``; no SQLite pages, no residue);
* ``recoded``: chunks re-coded per round at steady state (rounds after the first prune; with
  keep = all, rounds 2..N), ``rewrite``: their stored bytes / the round's plain bytes, and
  ``written``: all bytes written that round (the ingest's own chunks, then the re-codes), likewise;
* ``latest``: deltas decoded to restore the newest round, mean over steady-state rounds;
* ``worst``: the most deltas any kept round needs at any point, and ``depth`` the longest chain.

Not modelled: identical chunks (deduplicated by the engine; counted, zero on this trajectory),
SQLite page rounding, and the engine's recent-chunk cache (it saves decodes, not bytes).
``--engine`` runs the real engine (:func:`benchmarks.trajectory_bench.run_engine`, delta on) from
``--engine-root`` (default: this checkout) in a subprocess and prints it beside the model.

``python -m benchmarks.chain_shapes [--quick] [--json OUT] [--engine] [--engine-root DIR]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import trajectory
from benchmarks.runner import REPO_ROOT
from chunkd import codec
from chunkd.checkpoint import parse_checkpoint, read_into
from chunkd.flatindex import plan_chunks

COMPRESSIONS = ("auto", "max")
KEEPS = (0, 5, 3)  # 0 keeps every round


@dataclass(frozen=True)
class Policy:
    name: str
    reverse: bool
    interval: int | None  # KEY_INTERVAL; None: no bound (forward only)


POLICIES = (
    Policy("a fwd/4", False, 4),
    Policy("b fwd/8", False, 8),
    Policy("c fwd/-", False, None),
    Policy("d rev/8", True, 8),
    Policy("e rev/4", True, 4),
    Policy("e rev/16", True, 16),
)


@dataclass
class Sizes:
    """One client's coded chunk sizes, ``[round][chunk]``; a delta is None where the codec
    chose the chunk on its own (then a real ingest would store a key)."""

    plain: list[int]
    key: list[list[int]]
    fwd: list[list[int | None]]  # against the previous round's chunk
    rev: list[list[int | None]]  # against the next round's chunk
    identical: int = 0  # chunks equal to the previous round's (the engine would store them once)


def round_chunks(path: Path) -> list[tuple[int, bytearray]]:
    """``(group width, raw bytes)`` of each chunk, cut and read as ``chunkd.ingest`` does."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parsed = parse_checkpoint(fd, os.fstat(fd).st_size)
        slot_of = {s.name: i for i, s in enumerate(parsed.storages)}
        out = []
        for spec in plan_chunks(parsed.storages, 10, 1 << 20):
            buf = bytearray(spec.nbytes)
            view, pos = memoryview(buf), 0
            for part in spec.parts:
                slot = parsed.storages[slot_of[part.name]]
                offset = slot.file_offset + part.flat_start * slot.itemsize
                read_into(fd, offset, view[pos : pos + part.nbytes])
                pos += part.nbytes
            out.append((codec.group_width(spec.itemsizes()), buf))
        return out
    finally:
        os.close(fd)


def _delta(raw: bytearray, width: int, compression: str, base: bytearray) -> int | None:
    name, stored = codec.encode(raw, width, compression, base)
    return len(stored) if codec.is_delta(name) else None


def measure(paths: list[Path], compression: str) -> Sizes:
    """Key, forward and reverse delta sizes of every chunk of one client's rounds."""
    sizes = Sizes([], [], [], [])
    previous: list[tuple[int, bytearray]] = []
    for path in paths:
        chunks = round_chunks(path)
        sizes.plain.append(path.stat().st_size)
        sizes.key.append([len(codec.encode(raw, w, compression)[1]) for w, raw in chunks])
        sizes.fwd.append([None] * len(chunks))
        sizes.rev.append([None] * len(chunks))
        if previous:
            if len(previous) != len(chunks):
                raise ValueError(f"{path}: chunked unlike the round before it")
            for c, ((w, raw), (_, old)) in enumerate(zip(chunks, previous, strict=True)):
                sizes.fwd[-1][c] = _delta(raw, w, compression, old)
                sizes.rev[-2][c] = _delta(old, w, compression, raw)
                if hashlib.sha256(raw).digest() == hashlib.sha256(old).digest():
                    sizes.identical += 1
        previous = chunks
    return sizes


Node = tuple[int | None, int]  # (round of the base, or None for a key chunk; stored bytes)


def _depth(state: dict[int, list[Node]], r: int, c: int) -> int:
    n, base = 0, state[r][c][0]
    while base is not None:
        n, base = n + 1, state[base][c][0]
    return n


def _tail(state: dict[int, list[Node]], r: int, c: int) -> int:
    """Links hanging below chunk ``c`` of round ``r`` (reverse chains are linear)."""
    n = 0
    while r - 1 in state and state[r - 1][c][0] == r:
        n, r = n + 1, r - 1
    return n


def _forward(state: dict[int, list[Node]], sizes: Sizes, r: int, k: int | None) -> None:
    """Round ``r`` as deltas on round ``r - 1`` unless the base is ``k - 1`` links from a key
    (``DeltaBases.base_for`` of chunkd 0.2)."""
    row: list[Node] = []
    for c, key in enumerate(sizes.key[r]):
        delta = sizes.fwd[r][c]
        bounded = r - 1 in state and (k is None or _depth(state, r - 1, c) + 1 < k)
        row.append((r - 1, delta) if delta is not None and bounded else (None, key))
    state[r] = row


def _reverse(state: dict[int, list[Node]], sizes: Sizes, r: int, k: int) -> tuple[int, int]:
    """Round ``r`` whole, then round ``r - 1`` linked onto it as ``deltas.link_previous_round``
    does: a key chunk becomes a smaller delta while the links below the new key stay under
    ``k``. Returns the chunks and bytes re-coded."""
    state[r] = [(None, key) for key in sizes.key[r]]
    recoded = rewritten = 0
    for c in range(len(sizes.key[r])) if r - 1 in state else ():
        (base, stored), delta = state[r - 1][c], sizes.rev[r - 1][c]
        fits = _tail(state, r - 1, c) + 2 <= k
        if base is None and delta is not None and delta < stored and fits:
            state[r - 1][c] = (r, delta)
            recoded, rewritten = recoded + 1, rewritten + delta
    return recoded, rewritten


def simulate(sizes: Sizes, policy: Policy, keep: int) -> dict[str, int]:
    """Replay ingest, link and retention of one client; totals for :func:`summarize`."""
    state: dict[int, list[Node]] = {}
    names = ("recoded", "rewritten", "ingested", "steady_plain", "steady_rounds", "latest")
    t = dict.fromkeys(names, 0)
    t.update(worst=0, depth=0)
    for r in range(len(sizes.key)):
        chunks = range(len(sizes.key[r]))
        recoded = rewritten = 0
        if policy.reverse:
            recoded, rewritten = _reverse(state, sizes, r, policy.interval or 0)
        else:
            _forward(state, sizes, r, policy.interval)
        ingested = sum(n[1] for n in state[r])
        pruned = bool(keep) and len(state) > keep
        for old in sorted(state)[: -keep if keep else 0]:
            del state[old]
        for rr, nodes in state.items():  # promote_orphaned_deltas
            for c, (base, _) in enumerate(nodes):
                if base is not None and base not in state:
                    nodes[c] = (None, sizes.key[rr][c])
                    recoded, rewritten = recoded + 1, rewritten + sizes.key[rr][c]
        depths = {rr: [_depth(state, rr, c) for c in chunks] for rr in state}
        t["worst"] = max(t["worst"], *(sum(d) for d in depths.values()))
        t["depth"] = max(t["depth"], *(max(d, default=0) for d in depths.values()))
        if pruned if 0 < keep < len(sizes.key) else r > 0:  # steady state
            t["steady_rounds"] += 1
            t["recoded"] += recoded
            t["rewritten"] += rewritten
            t["ingested"] += ingested
            t["steady_plain"] += sizes.plain[r]
            t["latest"] += sum(depths[r])
    t["stored"] = sum(n[1] for nodes in state.values() for n in nodes)
    t["plain"] = sum(sizes.plain[r] for r in state)
    return t


def summarize(totals: list[dict[str, int]]) -> dict[str, float]:
    """Clients together: byte figures summed before dividing, counts averaged per round."""
    s = {k: sum(t[k] for t in totals) for k in totals[0]}
    rounds = max(s["steady_rounds"], 1)
    return {
        "stored": s["stored"] / s["plain"],
        "recoded": s["recoded"] / rounds,
        "rewrite": s["rewritten"] / max(s["steady_plain"], 1),
        "written": (s["ingested"] + s["rewritten"]) / max(s["steady_plain"], 1),
        "latest": s["latest"] / rounds,
        "worst": max(t["worst"] for t in totals),
        "depth": max(t["depth"] for t in totals),
    }


def symmetry(sizes: list[Sizes]) -> float:
    """Largest relative difference between a forward delta and the reverse one of the same pair."""
    worst = 0.0
    for s in sizes:
        for r in range(1, len(s.fwd)):
            for f, b in zip(s.fwd[r], s.rev[r - 1], strict=True):
                if f is not None and b is not None:
                    worst = max(worst, abs(f - b) / b)
    return worst


_ENGINE = """
import json, sys, tempfile
from pathlib import Path
from benchmarks.trajectory_bench import run_engine
from chunkd.ingest import IngestOptions
out = []
for dtype, compression, keep, files in json.loads(sys.argv[1]):
    with tempfile.TemporaryDirectory(prefix="chunkd-chains-") as work:
        opts = IngestOptions(compression=compression, delta=True)
        row = run_engine(Path(work), [[Path(p) for p in c] for c in files], opts, keep)
    out.append({"dtype": dtype, "compression": compression, "keep": keep, **row})
print(json.dumps(out))
"""


def run_engine(root: Path, runs: list[tuple[str, str, int, list[list[str]]]]) -> list[Any]:
    """The real engine from ``root`` (its own ``chunkd`` and ``benchmarks``), in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    argv = [sys.executable, "-c", _ENGINE, json.dumps(runs)]
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def run(directory: Path, settings: trajectory.Settings, engine_root: Path | None) -> dict[str, Any]:
    meta = trajectory.ensure(directory, settings)
    out: dict[str, Any] = {"settings": meta["settings"], "rows": [], "engine": []}
    out |= {"symmetry": {}, "identical": 0}
    clients = range(settings.clients)
    for dtype in trajectory.DTYPES:
        files = [trajectory.files(directory, dtype, c) for c in clients]
        for compression in COMPRESSIONS:
            started = time.perf_counter()
            sizes = [measure(paths, compression) for paths in files]
            out["symmetry"][f"{dtype}/{compression}"] = symmetry(sizes)
            out["identical"] += sum(s.identical for s in sizes)
            print(f"[chains] {dtype} {compression} coded in {time.perf_counter() - started:.0f} s")
            for policy in POLICIES:
                for keep in KEEPS:
                    row = summarize([simulate(s, policy, keep) for s in sizes])
                    out["rows"].append(
                        {"dtype": dtype, "compression": compression, "policy": policy.name}
                        | {"keep": keep, **row}
                    )
            if engine_root is not None:
                paths = [[str(p) for p in f] for f in files]
                runs = [(dtype, compression, k, paths) for k in KEEPS]
                out["engine"] += run_engine(engine_root, runs)
    return out


def render(out: dict[str, Any]) -> str:
    lines = [
        "| dtype | codec | policy | keep | stored/plain | recoded/round | rewrite/round "
        "| written/round | latest deltas | worst deltas | max depth |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in out["rows"]:
        lines.append(
            f"| {r['dtype']} | {r['compression']} | {r['policy']} | {r['keep'] or 'all'} "
            f"| {r['stored']:.3f} | {r['recoded']:.1f} | {r['rewrite']:.3f} | {r['written']:.3f} "
            f"| {r['latest']:.1f} | {r['worst']} | {r['depth']} |"
        )
    if out["engine"]:
        lines += [
            "",
            "| dtype | codec | keep | model (a) | model (d) | engine payload | engine db |",
        ]
        lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        model = {(r["dtype"], r["compression"], r["keep"], r["policy"]): r for r in out["rows"]}
        for e in out["engine"]:
            at = (e["dtype"], e["compression"], e["keep"])
            fwd, rev = (model[(*at, POLICIES[i].name)]["stored"] for i in (0, 3))
            lines.append(
                f"| {e['dtype']} | {e['compression']} | {e['keep'] or 'all'} | {fwd:.3f} "
                f"| {rev:.3f} | {e['payload_ratio']:.3f} | {e['ratio']:.3f} |"
            )
    sym = ", ".join(f"{k} {v:.2%}" for k, v in out["symmetry"].items())
    lines += ["", f"forward vs reverse delta, largest difference: {sym}"]
    lines.append(f"chunks identical to the previous round's: {out['identical']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="trajectory.QUICK, in its own directory")
    p.add_argument("--dir", type=Path, help="the trajectory cache")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--engine", action="store_true", help="also run the real engine for (d)")
    p.add_argument("--engine-root", type=Path, default=REPO_ROOT, help="checkout to run it from")
    args = p.parse_args(argv)
    settings = trajectory.QUICK if args.quick else trajectory.Settings()
    default = trajectory.DEFAULT_DIR.with_name("trajectory-quick" if args.quick else "trajectory")
    out = run(args.dir or default, settings, args.engine_root.resolve() if args.engine else None)
    print(render(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
