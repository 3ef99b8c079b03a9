"""The seed's flat-index chunking (SPEC.md "The flat index and chunks"), on sizes alone."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkd.flatindex import MAX_ITEMSIZE, plan_chunks
from chunkd.manifest import StorageSlot

ITEMSIZES = (1, 2, 4, 8, 16)


def slot(i: int, numel: int, itemsize: int, shape: tuple[int, ...] | None = None) -> StorageSlot:
    return StorageSlot(
        name=f"t{i}.weight",
        key=str(i),
        dtype=f"w{itemsize}",
        itemsize=itemsize,
        numel=numel,
        shape=(numel,) if shape is None else shape,
        file_offset=1000 * i,
    )


@st.composite
def storage_lists(draw: st.DrawFn, uniform: bool = False) -> list[StorageSlot]:
    widths = [draw(st.sampled_from(ITEMSIZES))] if uniform else None
    sizes = draw(st.lists(st.one_of(st.integers(0, 5), st.integers(0, 300)), max_size=12))
    return [
        slot(i, n, widths[0] if widths else draw(st.sampled_from(ITEMSIZES)))
        for i, n in enumerate(sizes)
    ]


def flat_ranges(storages, chunks) -> list[tuple[int, int]]:
    """Each chunk's parts as flat-index ranges ``[start, end)``."""
    elem_start, pos = {}, 0
    for s in storages:
        elem_start[s.name] = pos
        pos += s.numel
    return [
        (elem_start[p.name] + p.flat_start, elem_start[p.name] + p.flat_end)
        for chunk in chunks
        for p in chunk.parts
    ]


def check_plan(storages, chunk_num, max_chunk_bytes):
    chunks = plan_chunks(storages, chunk_num, max_chunk_bytes)
    total = sum(s.numel for s in storages)
    total_bytes = sum(s.nbytes for s in storages)
    if total == 0:
        assert chunks == []
        return chunks
    assert [c.chunk_id for c in chunks] == list(range(len(chunks)))
    # the parts cover the flat index exactly once, in order, with no gap and no overlap
    ranges = flat_ranges(storages, chunks)
    assert ranges[0][0] == 0
    assert ranges[-1][1] == total
    for (_a, end), (start, _b) in itertools.pairwise(ranges):
        assert end == start
    by_name = {s.name: s for s in storages}
    byte_pos = 0
    for chunk in chunks:
        assert chunk.parts, "never an empty chunk"
        assert type(chunk.flat_size) is int
        assert chunk.flat_size == sum(p.flat_end - p.flat_start for p in chunk.parts) >= 1
        assert all(p.flat_start < p.flat_end <= by_name[p.name].numel for p in chunk.parts)
        assert all(p.shape == by_name[p.name].shape for p in chunk.parts)
        assert chunk.byte_start == byte_pos
        assert chunk.nbytes == sum(p.nbytes for p in chunk.parts) <= max_chunk_bytes
        byte_pos = chunk.byte_end
        # the seed's descriptor, and its JSON
        descriptor = json.loads(json.dumps(chunk.descriptor()))
        assert descriptor == {
            "chunk_id": chunk.chunk_id,
            "flat_size": chunk.flat_size,
            "parts": {
                name: [list(r) for r in ranges] for name, ranges in chunk.parts_dict().items()
            },
        }
        assert json.loads(chunk.parts_json()) == descriptor["parts"]
    assert byte_pos == total_bytes
    assert sum(c.flat_size for c in chunks) == total
    assert len(chunks) >= min(chunk_num, total)
    return chunks


@settings(max_examples=300, deadline=None)
@given(
    storages=storage_lists(),
    chunk_num=st.integers(1, 40),
    max_chunk_bytes=st.integers(MAX_ITEMSIZE, 4096),
)
def test_chunks_cover_the_flat_index_within_the_cap(storages, chunk_num, max_chunk_bytes):
    check_plan(storages, chunk_num, max_chunk_bytes)


@settings(max_examples=200, deadline=None)
@given(storages=storage_lists(), chunk_num=st.integers(1, 40))
def test_without_the_cap_sizes_differ_by_at_most_one(storages, chunk_num):
    total = sum(s.numel for s in storages)
    cap = max(MAX_ITEMSIZE, sum(s.nbytes for s in storages))
    chunks = check_plan(storages, chunk_num, cap)
    if total:
        assert len(chunks) == min(chunk_num, total)
        sizes = [c.flat_size for c in chunks]
        assert max(sizes) - min(sizes) <= 1


@settings(max_examples=200, deadline=None)
@given(
    storages=storage_lists(uniform=True),
    chunk_num=st.integers(1, 40),
    cap_elements=st.integers(1, 300),
)
def test_the_cap_adds_just_enough_chunks(storages, chunk_num, cap_elements):
    """One element width and a cap that is a whole number of elements: exactly the chunks the
    cap needs, near-equal."""
    width = storages[0].itemsize if storages else 4
    cap = max(MAX_ITEMSIZE // width, cap_elements) * width
    total = sum(s.numel for s in storages)
    chunks = check_plan(storages, chunk_num, cap)
    if total:
        needed = -(-total * width // cap)
        assert len(chunks) == min(total, max(chunk_num, needed))
        sizes = [c.flat_size for c in chunks]
        assert max(sizes) - min(sizes) <= 1


@given(numels=st.lists(st.integers(0, 3), min_size=1, max_size=6), extra=st.integers(1, 10))
def test_fewer_elements_than_chunks_gives_one_chunk_per_element(numels, extra):
    storages = [slot(i, n, 4) for i, n in enumerate(numels)]
    total = sum(numels)
    chunks = check_plan(storages, total + extra, 1 << 20)
    assert len(chunks) == total
    assert all(c.flat_size == 1 for c in chunks)


@pytest.mark.parametrize("storages", [[], [slot(0, 0, 4)], [slot(0, 0, 4), slot(1, 0, 8)]])
def test_no_elements_no_chunks(storages):
    assert plan_chunks(storages, 10, 1 << 20) == []


def test_boundaries_depend_on_sizes_only():
    """Same sizes, other names: the same cuts (that is what makes unchanged ranges dedup)."""
    a = [slot(i, n, w) for i, (n, w) in enumerate([(100, 4), (7, 8), (300, 2)])]
    b = [StorageSlot(f"other{s.key}", s.key, s.dtype, s.itemsize, s.numel, s.shape, 0) for s in a]
    cuts = [(c.byte_start, c.byte_end, c.flat_size) for c in plan_chunks(a, 7, 200)]
    assert cuts == [(c.byte_start, c.byte_end, c.flat_size) for c in plan_chunks(b, 7, 200)]


def test_seed_example_descriptor():
    storages = [slot(0, 6, 4, shape=(2, 3)), slot(1, 4, 4, shape=(4,))]
    chunks = plan_chunks(storages, 3, 1 << 20)
    assert [c.descriptor() for c in chunks] == [
        {"chunk_id": 0, "parts": {"t0.weight": [(0, 3, [2, 3])]}, "flat_size": 3},
        {"chunk_id": 1, "parts": {"t0.weight": [(3, 6, [2, 3])]}, "flat_size": 3},
        {"chunk_id": 2, "parts": {"t1.weight": [(0, 4, [4])]}, "flat_size": 4},
    ]


def test_empty_storage_between_others_is_skipped():
    storages = [slot(0, 3, 4), slot(1, 0, 4), slot(2, 3, 4)]
    chunks = check_plan(storages, 2, 1 << 20)
    assert [sorted(c.parts_dict()) for c in chunks] == [["t0.weight"], ["t2.weight"]]


def test_a_chunk_crossing_storages_lists_each_part():
    storages = [slot(0, 5, 4), slot(1, 5, 2)]
    [chunk] = plan_chunks(storages, 1, 1 << 20)
    assert chunk.parts_dict() == {"t0.weight": [(0, 5, [5])], "t1.weight": [(0, 5, [5])]}
    assert chunk.nbytes == 30


@pytest.mark.parametrize(("chunk_num", "cap"), [(0, 1024), (-1, 1024), (10, MAX_ITEMSIZE - 1)])
def test_invalid_arguments(chunk_num, cap):
    with pytest.raises(ValueError):
        plan_chunks([slot(0, 10, 4)], chunk_num, cap)
