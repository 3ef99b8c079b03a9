"""The pickle reader's budget: what it accepts, what it refuses, and what each costs (issue 9).

Each input is scanned in a child process, so its CPU time and peak RSS are its own; the figures
(largest accepted and refused inputs, CPU-s and peak RSS for each) go to docs/RELIABILITY.md.
The naming case is a valid checkpoint whose nested keys spell one dotted path thousands of
times: the old linear ``name~1, name~2, ...`` probe made it quadratic (minutes of CPU).
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from chunkd import pickle_scan, tensor_names

pytestmark = pytest.mark.slow

#: What a child reports: outcome, CPU seconds, peak RSS, and its RSS before scanning.
_SCAN = r"""
import json, sys, time
from chunkd.pickle_scan import PickleBudgetError, scan_pickle
from chunkd.tensor_names import name_storages
def hwm_mib():  # this process's own peak (VmHWM); ru_maxrss would include the parent's
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
data = open(sys.argv[1], "rb").read()
base = hwm_mib()
t0 = time.process_time()
try:
    names = name_storages(scan_pickle(data))
    outcome = f"accepted: {len(names)} storages"
except PickleBudgetError as e:
    outcome = f"refused: {e}"
print(json.dumps({
    "outcome": outcome,
    "cpu_s": round(time.process_time() - t0, 3),
    "peak_rss_mib": hwm_mib(),
    "base_rss_mib": base,
    "bytes": len(data),
}))
"""


#: The issue's measurement: 19 MB of EMPTY_LIST took 2.7 GB before the budget.
def scan_in_child(tmp_path: Path, name: str, data: bytes) -> dict[str, object]:
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-c", _SCAN, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def data_pkl(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        (name,) = [n for n in z.namelist() if n.endswith("/data.pkl")]
        return z.read(name)


def same_path_tree(segments: list[str], tensor: torch.Tensor) -> dict[str, object]:
    """Every way to split ``a.b.c...`` into nested keys, each leading to ``tensor``: 2^(n-1)
    tensor paths, all spelling the same dotted name, in unshared dicts."""
    node: dict[str, object] = {}
    for k in range(1, len(segments) + 1):
        key = ".".join(segments[:k])
        node[key] = tensor if k == len(segments) else same_path_tree(segments[k:], tensor)
    return node


def empty_lists(count: int) -> bytes:
    """``count`` EMPTY_LIST opcodes: the issue's 19 MB input that took 2.7 GB to read."""
    return b"\x80\x02" + b"]" * count + b"."


def appends_of_ints(count: int) -> bytes:
    """One list of ``count`` small ints: many values, few containers."""
    return b"\x80\x02](" + b"K\x01" * count + b"e."


def memo_puts(count: int) -> bytes:
    """``count`` distinct memo entries of one value."""
    body = b"".join(b"r" + struct.pack("<I", i) for i in range(count))
    return b"\x80\x02N" + body + b"."


def many_tensors(count: int) -> bytes:
    return data_pkl({f"layer{i}.weight": torch.zeros(1) for i in range(count)})


def test_naming_is_linear_for_paths_that_spell_one_name(tmp_path: Path, figures) -> None:
    segments = [f"s{i}" for i in range(15)]  # 16384 tensor paths, one name
    data = data_pkl({"model": same_path_tree(segments, torch.zeros(2))})
    got = scan_in_child(tmp_path, "same_path", data)
    assert str(got["outcome"]).startswith("accepted"), got
    # the old probe: ~134 M set lookups of fresh f-strings, a minute of CPU
    assert float(got["cpu_s"]) < 5.0, got
    scanned = pickle_scan.scan_pickle(data)
    names = [name for name, _ in tensor_names.walk_tensors(scanned.root)]
    assert len(names) == len(set(names)) == 1 << 14
    first = ".".join(["model", *segments])
    assert names[0] == first and names[1] == f"{first}~1" and names[-1] == f"{first}~16383"
    figures["same_path_16384"] = got
    figures.save()


def test_unique_names_match_the_linear_probe() -> None:
    names = tensor_names.UniqueNames()
    taken = [names.take(n) for n in ["a", "a~1", "a", "a", "a~2", "a~1", "b", "a"]]
    assert taken == ["a", "a~1", "a~2", "a~3", "a~2~1", "a~1~1", "b", "a~4"]


@pytest.mark.parametrize(
    ("case", "build", "accepted"),
    [
        ("empty_lists_19MB", lambda: empty_lists(19_000_000), False),
        ("empty_lists_at_budget", lambda: empty_lists(pickle_scan.MAX_CONTAINERS), True),
        # the accepted sides of the two largest budgets take tens of seconds: make integration
        pytest.param(
            "ints_at_budget",
            lambda: appends_of_ints(pickle_scan.MAX_OBJECTS - 3),
            True,
            marks=pytest.mark.scale,
        ),
        ("ints_over_budget", lambda: appends_of_ints(pickle_scan.MAX_OBJECTS), False),
        ("memo_over_budget", lambda: memo_puts(pickle_scan.MAX_MEMO + 1), False),
        pytest.param(
            "tensors_at_budget",
            lambda: many_tensors(pickle_scan.MAX_TENSORS),
            True,
            marks=pytest.mark.scale,
        ),
        ("tensors_over_budget", lambda: many_tensors(pickle_scan.MAX_TENSORS + 1), False),
    ],
)
def test_budget(tmp_path: Path, figures, case: str, build, accepted: bool) -> None:
    got = scan_in_child(tmp_path, case, build())
    outcome = str(got["outcome"])
    if accepted:
        assert outcome.startswith("accepted"), got
    else:
        assert outcome.startswith("refused: data.pkl exceeds the reader's budget"), got
    # Nothing within or beyond the budget costs more than a few seconds or ~200 MB.
    assert float(got["cpu_s"]) < 10.0, got
    assert float(got["peak_rss_mib"]) - float(got["base_rss_mib"]) < 250, got
    figures[case] = got
    figures.save()


def test_a_real_state_dict_is_far_inside_the_budget() -> None:
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(500)])
    data = data_pkl({"model": model.state_dict(), "optimizer": {"lr": 0.1}})
    assert len(tensor_names.walk_tensors(pickle_scan.scan_pickle(data).root)) == 1000
