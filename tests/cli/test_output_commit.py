"""A file output is committed without a second pass over its bytes (issue 18, item 3).

The writer (the daemon through the passed fd, or this process) hashes exactly the buffers it
writes and a restore checks that digest against the ingested file's; reading a GiB back only to
hash it again cost as much as the copy. What the commit still checks is the size that landed.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path

import pytest

from chunkd.cli.output import WRITEBACK_BYTES, Output
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


_SYS_CACHESTAT = 451  # Linux 6.5+, every architecture (asm-generic)


def _dirty_pages(fd: int) -> int | None:
    """Pages of ``fd`` still dirty in the page cache (cachestat(2)); None where unsupported."""
    cstat = (ctypes.c_uint64 * 5)()  # nr_cache, nr_dirty, nr_writeback, nr_evicted, ...
    whole = (ctypes.c_uint64 * 2)(0, 0)  # offset 0, length 0: to the end of the file
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_CACHESTAT, fd, whole, cstat, 0) != 0:
        return None
    return int(cstat[1])


def test_a_file_output_is_written_back_while_it_fills(tmp_path: Path) -> None:
    """Before, all of a restored file was still dirty when the commit's fsync began (1 GiB:
    1.6 s of the restore spent there). Now write-back starts every WRITEBACK_BYTES written here,
    and on each progress tick for the bytes the daemon wrote into the descriptor."""
    block = os.urandom(1 << 20)
    with Output.open(str(tmp_path / "restored.pth")) as out:
        os.write(out.fd, block)
        if not _dirty_pages(out.fd):
            pytest.skip("no cachestat(2), or no write-back on this filesystem")
        total = 3 * WRITEBACK_BYTES
        while os.fstat(out.fd).st_size < total:
            out.write(block)
        dirty = _dirty_pages(out.fd)
        assert dirty is not None
        assert dirty * os.sysconf("SC_PAGE_SIZE") <= WRITEBACK_BYTES, dirty
        # the daemon's writes, seen only through the file's size: one tick starts them too
        for _ in range(8):
            os.write(out.fd, block)
        assert _dirty_pages(out.fd) >= 8 * len(block) // os.sysconf("SC_PAGE_SIZE")
        out.start_writeback()
        assert _dirty_pages(out.fd) * os.sysconf("SC_PAGE_SIZE") < 8 * len(block)
        out.commit("", os.fstat(out.fd).st_size)
