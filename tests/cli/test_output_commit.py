"""A file output is committed without a second pass over its bytes (issue 18, item 3).

The writer (the daemon through the passed fd, or this process) hashes exactly the buffers it
writes and a restore checks that digest against the ingested file's; reading a GiB back only to
hash it again cost as much as the copy. What the commit still checks is the size that landed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from chunkd.cli.output import Output
from chunkd.errors import IntegrityError


def test_commit_does_not_read_the_output_back(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "restored.pth"
    data = b"checkpoint bytes " * 1000
    reads: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        reads.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr("os.pread", counting_pread)
    with Output.open(str(target)) as out:
        out.write(data)
        out.commit(hashlib.sha256(data).hexdigest(), len(data))
    assert target.read_bytes() == data
    assert reads == []


def test_commit_refuses_a_file_whose_size_is_not_what_the_writer_reported(
    tmp_path: Path,
) -> None:
    target = tmp_path / "restored.pth"
    data = b"x" * 4096
    with pytest.raises(IntegrityError, match="holds 4096 bytes"), Output.open(str(target)) as out:
        out.write(data)
        out.commit(hashlib.sha256(data).hexdigest(), len(data) + 1)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone too
