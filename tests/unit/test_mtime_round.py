"""rounds.round_from_mtime: rounds of unnumbered checkpoints in time order (issue 11, item 4)."""

from __future__ import annotations

import pytest

from chunkd.errors import CheckpointError
from chunkd.rounds import MAX_ROUND, round_from_mtime

NS = 1_000_000_000


def test_round_is_the_modification_second_whatever_was_stored_before():
    written = 1_764_630_123 * NS + 456
    assert round_from_mtime(written, None) == 1_764_630_123
    # A daemon that started late (nothing stored) or early (a few older versions) agrees.
    assert round_from_mtime(written, 1_764_630_000) == 1_764_630_123


def test_versions_in_the_same_second_or_with_the_clock_set_back_still_increase():
    assert round_from_mtime(1_764_630_123 * NS, 1_764_630_123) == 1_764_630_124
    assert round_from_mtime(1_764_000_000 * NS, 1_764_630_123) == 1_764_630_124


def test_before_1970_counts_as_zero_and_the_top_is_rejected():
    assert round_from_mtime(-5 * NS, None) == 0
    assert round_from_mtime(-5 * NS, 0) == 1
    with pytest.raises(CheckpointError):
        round_from_mtime(0, MAX_ROUND)
