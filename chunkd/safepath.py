"""Open a client's file beneath its directory, following no symlink, and delete it only if it is
still the file that was opened.

The daemon runs with more rights than its tenants, and a tenant controls everything inside its
own client directory. ``O_NOFOLLOW`` guards only the last component, and "resolve, check, then
open the path" races with a tenant who swaps a subdirectory for a symlink in between: the daemon
would read (or, with ``delete_after_ingest``, delete) a file outside every root. So:

* :func:`open_beneath` opens the client directory once, then walks the remaining components one
  by one with ``openat`` (``dir_fd``) and ``O_NOFOLLOW``: every directory with ``O_DIRECTORY``,
  the file itself as a regular file (``O_NONBLOCK``, so a FIFO cannot block the open). ``..``,
  ``.`` and empty components are refused. What is opened is beneath the directory whatever is
  renamed or replaced meanwhile: a swapped-in symlink fails the walk (``ELOOP``/``ENOTDIR``).
* :class:`BeneathFile` keeps the file's descriptor and its parent directory's descriptor. The
  caller reads the checkpoint through the descriptor (``ingest_file(fd=...)``) and keeps it
  until :meth:`BeneathFile.unlink_if_same`, which removes the name by ``dir_fd`` only while
  ``lstat`` of that name still shows the very inode that was read.

The client directory itself comes from the configuration or from discovery under
``watch_root``, both the operator's, and is opened as named.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path, PurePath
from types import TracebackType

from chunkd.errors import ForbiddenError, NotACheckpointError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def relative_to_directory(path: Path, directory: Path) -> PurePath:
    """``path`` inside ``directory``, lexically (nothing is resolved); ForbiddenError if not.

    Both must be absolute; ``..``, ``.`` and empty components are refused rather than
    interpreted, so the walk below sees only real names.
    """
    if not path.is_absolute():
        raise ForbiddenError(f"{path}: an absolute path inside the client directory is needed")
    try:
        relative = PurePath(path).relative_to(directory)
    except ValueError:
        raise ForbiddenError(f"{path} is not inside the client directory {directory}") from None
    parts = relative.parts
    if not parts or any(part in ("", ".", "..") for part in parts):
        raise ForbiddenError(f"{path}: no '.' or '..' components, and not the directory itself")
    return relative


class BeneathFile:
    """A file opened beneath a directory: its descriptor, its parent's, and its name there."""

    __slots__ = ("fd", "name", "parent_fd", "path", "stat")

    def __init__(self, path: Path, fd: int, parent_fd: int, name: str, st: os.stat_result) -> None:
        self.path = path
        self.fd = fd
        self.parent_fd = parent_fd
        self.name = name
        self.stat = st

    def still_named(self) -> bool:
        """Whether the name in the parent directory is still the inode that was opened."""
        try:
            now = os.stat(self.name, dir_fd=self.parent_fd, follow_symlinks=False)
        except OSError:
            return False
        return (now.st_dev, now.st_ino) == (self.stat.st_dev, self.stat.st_ino)

    def unlink_if_same(self) -> bool:
        """Remove the name, by ``dir_fd``, only if it still names the opened file.

        A tenant who renames something else onto the name in between loses that file of its
        own directory at worst: the parent descriptor pins the directory, so nothing outside it
        can be reached.
        """
        if not self.still_named():
            return False
        os.unlink(self.name, dir_fd=self.parent_fd)
        return True

    def close(self) -> None:
        for fd in (self.fd, self.parent_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fd = self.parent_fd = -1

    def __enter__(self) -> BeneathFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_beneath(directory: Path, path: Path) -> BeneathFile:
    """Open the regular file ``path`` (absolute, inside ``directory``) without leaving it.

    Raises ForbiddenError for a path outside the directory or one that passes through a
    symlink, FileNotFoundError when a component is missing, NotACheckpointError when the
    target is not a regular file.
    """
    relative = relative_to_directory(path, directory)
    *dirs, name = relative.parts
    current = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in dirs:
            try:
                following = os.open(part, _DIR_FLAGS, dir_fd=current)
            except OSError as e:
                raise _walk_error(e, path, part) from None
            os.close(current)
            current = following
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=current)
        except OSError as e:
            raise _walk_error(e, path, name) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotACheckpointError(f"{path} is not a regular file")
        except BaseException:
            os.close(fd)
            raise
    except BaseException:
        os.close(current)
        raise
    return BeneathFile(path, fd, current, name, st)


def _walk_error(error: OSError, path: Path, part: str) -> OSError | ForbiddenError:
    # ELOOP: O_NOFOLLOW met a symlink; ENOTDIR: a symlink (or file) where a directory must be.
    if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return ForbiddenError(
            f"{path}: {part!r} is a symlink or not a directory; the daemon reads only files "
            "beneath the client directory and follows no link there"
        )
    return error
