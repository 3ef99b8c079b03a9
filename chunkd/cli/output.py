"""Where restored and exported bytes land: a file replaced atomically, or stdout.

A file output is written to a temporary name next to the target (same directory, so the final
``rename`` is atomic and never crosses filesystems), created ``O_EXCL``, read-write, with mode
0644 minus the umask and the caller's own permissions: when the daemon writes, it writes through
this descriptor, never by path. On success the bytes are flushed to disk, the file's size is
checked against what the writer reported, and only then is it renamed over the target. The
bytes are not read back: the writer (the daemon, or this process) hashed exactly the buffers it
wrote, in order, and a restore compared that SHA-256 with the ingested file's before reporting
success (docs/DESIGN.md "Digests"); a second pass over a GiB would cost as much as the copy it
checks. On any failure, interrupts included, the temporary file is removed: the target is
either the complete, verified file or untouched (Litestream's "write ``.tmp``, then rename";
restic's restorer, which leaves partial files behind, is what this avoids).

Stdout (``-o -``) cannot be re-read either; there too the writer's SHA-256 (the daemon's, or the
frame trailer the client checked) is the proof.

While a file output fills, the kernel is asked to start writing back what has landed
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait): every ``WRITEBACK_BYTES`` this
process writes, and on each progress tick while the daemon writes. The disk then works while
chunks are still being decoded, and the fsync before the rename waits for the last few MiB, not
for the whole file (at 1 GiB it took 1.6 s of a restore's time, 0.1 s with this). It changes no
byte and no durability guarantee: the fsync is still what the rename waits for.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from chunkd.errors import ChunkdError, ForbiddenError, IntegrityError, RequestError

STDOUT: Final = "-"
#: Start write-back of a file output every this many bytes written by this process.
WRITEBACK_BYTES: Final = 16 << 20
_SYNC_FILE_RANGE_WRITE: Final = 2  # <fcntl.h>: start write-out of dirty pages, do not wait


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until everything is written (a pipe takes partial writes)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


class Output:
    """An output target; ``fd`` is what gets written to (or passed to the daemon)."""

    def __init__(self, fd: int, target: Path | None, tmp: Path | None) -> None:
        self.fd = fd
        self.target = target
        self._tmp = tmp
        self._written = 0  # bytes this process wrote (the daemon's writes are seen by fstat)
        self._writeback_from = 0  # write-back has been started for the bytes before this

    @classmethod
    def open(cls, spec: str) -> Output:
        """``-`` for stdout, else a temporary file next to the path ``spec``."""
        if spec == STDOUT:
            return cls.stdout()
        target = Path(spec)
        if target.is_dir():
            raise RequestError(f"{target} is a directory; give a file name with -o")
        tmp = target.with_name(f".{target.name}.{os.urandom(4).hex()}.partial")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except (FileNotFoundError, NotADirectoryError):
            raise RequestError(
                f"cannot create {target}: no directory {target.parent}; create it first"
            ) from None
        except PermissionError as e:  # a directory the caller may not write: exit 6
            raise ForbiddenError(f"cannot create {target}: {e.strerror}") from None
        except OSError as e:
            raise ChunkdError(f"cannot create {target}: {e.strerror}") from None
        return cls(fd, target, tmp)

    @classmethod
    def stdout(cls) -> Output:
        sys.stdout.flush()
        fd = sys.stdout.fileno()
        if os.isatty(fd):
            raise RequestError(
                "refusing to write a checkpoint to a terminal; use -o FILE or a pipe"
            )
        return cls(fd, None, None)

    @property
    def is_file(self) -> bool:
        return self._tmp is not None

    def bytes_so_far(self) -> int:
        """How much has landed (for a progress bar); 0 when that cannot be seen (a pipe)."""
        if not self.is_file:
            return 0
        with contextlib.suppress(OSError):
            st = os.fstat(self.fd)
            if stat.S_ISREG(st.st_mode):
                return st.st_size
        return 0

    def write(self, data: bytes | memoryview) -> None:
        write_all(self.fd, data)
        if self._tmp is not None:
            self._written += len(data)
            if self._written - self._writeback_from >= WRITEBACK_BYTES:
                self.start_writeback(self._written)

    def start_writeback(self, landed: int | None = None) -> None:
        """Ask the kernel to start writing what has landed to disk, without waiting for it.

        ``landed``: the file's size if known (else it is looked up). Only for a file output;
        a no-op where ``sync_file_range`` does not exist (the final fsync then does it all).
        """
        if self._tmp is None or self.fd < 0:
            return
        if landed is None:
            landed = self.bytes_so_far()
        if landed <= self._writeback_from:
            return
        sync_file_range = _sync_file_range()
        if sync_file_range is not None:
            sync_file_range(self.fd, self._writeback_from, 0, _SYNC_FILE_RANGE_WRITE)
        self._writeback_from = landed

    def commit(self, sha256: str, size: int) -> None:
        """Make the output final if ``size`` bytes landed (the writer proved ``sha256`` of them).

        IntegrityError if the file's size differs; the caller's ``with`` block then removes it.
        """
        if self._tmp is None or self.target is None:
            return
        os.fsync(self.fd)
        landed = os.fstat(self.fd).st_size
        if landed != size:
            raise IntegrityError(
                f"{self.target} holds {landed} bytes, the writer reported {size} "
                f"(sha256 {sha256[:16]}…); nothing was kept"
            )
        os.close(self.fd)
        self.fd = -1
        self._tmp.replace(self.target)
        self._tmp = None
        _fsync_dir(self.target.parent)

    def discard(self) -> None:
        """Remove the temporary file (after a failure); stdout is left alone."""
        if self._tmp is None:
            return
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._tmp.unlink(missing_ok=True)
        self._tmp = None

    def __enter__(self) -> Output:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None or self._tmp is not None:
            self.discard()  # failed, or never committed: nothing half-written survives


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux; Python does not wrap it), or None where it is missing.

    Errors are ignored: it only starts work the final fsync would do anyway.
    """
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some filesystems refuse fsync on a directory, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
