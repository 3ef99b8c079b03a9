"""A delta chain decodes plane by plane (XOR each byte plane across the links, interleave once) to
exactly the bytes a link-by-link decode gives, and a damaged link is still named."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from chunkd import codec
from chunkd.errors import IntegrityError
from chunkd.store.chains import Chain
from chunkd.store.records import StoredChunk


def _drifting_rounds(nbytes: int, count: int, seed: int = 3) -> list[bytes]:
    """Raw chunks of float32 weights moving a little each round; ``nbytes`` may end mid-word."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(nbytes // 4 + 1).astype(np.float32)
    tail = rng.integers(0, 256, nbytes % 4, dtype=np.uint8).tobytes()
    rounds = []
    for _ in range(count):
        weights = weights + np.float32(1e-3) * rng.standard_normal(len(weights)).astype(np.float32)
        rounds.append(weights.tobytes()[: nbytes - len(tail)] + tail)
    return rounds


def _forward_chain(rounds: list[bytes]) -> list[StoredChunk]:
    """Round 0 a key, every later round a delta on the one before; newest first (as read)."""
    links: list[StoredChunk] = []
    base: bytes | None = None
    for raw in rounds:
        name, stored = codec.encode(raw, 4, "auto", base)
        assert codec.is_delta(name) == (base is not None), name
        links.append(
            StoredChunk(
                hashlib.sha256(raw).hexdigest(),
                name,
                bytes(stored),
                len(raw),
                hashlib.sha256(base).hexdigest() if base is not None else None,
            )
        )
        base = raw
    return links[::-1]


def _link_by_link(links: list[StoredChunk], base: bytes | None) -> bytes:
    raw = (
        base
        if base is not None
        else codec.decode(links[-1].codec, links[-1].data, links[-1].raw_size)
    )
    for link in reversed(links[:-1] if base is None else links):
        raw = codec.decode(link.codec, link.data, link.raw_size, raw)
    return raw


@pytest.mark.parametrize("nbytes", [1 << 18, (1 << 18) + 3, 9_999])  # zp planes; a tail; bgz
def test_a_delta_chain_decodes_plane_by_plane_to_the_same_bytes(nbytes):
    rounds = _drifting_rounds(nbytes, 4)
    links = _forward_chain(rounds)
    expected_codec = "zp4" if nbytes >= codec.PLANES_MIN_BYTES else "bgz4"
    assert links[-1].codec == expected_codec
    planes = [codec.planes_of(link.codec, link.data, link.raw_size) for link in links]
    assert all(p is not None and p.width == 4 for p in planes)

    # the whole chain down to its key, and the top two links on a base already at hand
    view = codec.decode_plane_chain(planes)  # type: ignore[arg-type]
    assert bytes(view) == rounds[-1] == _link_by_link(links, None)
    on_base = codec.decode_plane_chain(planes[:2], rounds[1])  # type: ignore[arg-type]
    assert bytes(on_base) == rounds[-1] == _link_by_link(links[:2], rounds[1])

    chain = Chain(tuple(links), None)
    assert chain.decode() == rounds[-1]
    assert bytes(chain.decode_view()) == rounds[-1]
    assert Chain(tuple(links[:2]), rounds[1]).decode() == rounds[-1]
    assert Chain(tuple(links[-1:]), None).decode() == rounds[0]  # a key alone


def test_a_damaged_link_of_a_plane_decoded_chain_is_named():
    links = _forward_chain(_drifting_rounds(1 << 18, 3))
    middle = links[1]
    data = bytearray(middle.data)
    data[len(data) // 2] ^= 0xFF  # inside a plane's zstd frame: its checksum fails
    links[1] = StoredChunk(
        middle.chunk_hash, middle.codec, bytes(data), middle.raw_size, middle.base_hash
    )
    with pytest.raises(IntegrityError, match=middle.chunk_hash):
        Chain(tuple(links), None).decode_view()


def test_a_chain_of_mixed_word_widths_decodes_link_by_link():
    rounds = _drifting_rounds(1 << 16, 2)
    key_name, key = codec.encode(rounds[0], 2, "auto")  # grouped by 2-byte words
    delta_name, delta = codec.encode(rounds[1], 4, "auto", rounds[0])
    assert (key_name, delta_name) == ("zp2", "xzp4")
    links = (
        StoredChunk("top", delta_name, bytes(delta), len(rounds[1]), "key"),
        StoredChunk("key", key_name, bytes(key), len(rounds[0]), None),
    )
    assert Chain(links, None).decode() == rounds[1]
