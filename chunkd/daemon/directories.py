"""The configured directories the daemon starts from: used as they are, never invented (issue 21).

A mistyped ``watch_root`` used to be created with all its parents, so the daemon looked healthy
while it watched nothing ("clients watched 0" and a warning were the only signs). Now:

* ``watch_root`` must exist (exit 78 naming the key and the path otherwise), except under the
  built-in defaults (no config file: the quick start's ``~/.local/share/chunkd/fl``), where it is
  created. The install's tmpfiles.d creates ``/srv/fl``, the installed config's root. A missing
  root is a typo or an unmounted filesystem: waiting for it would hide the typo, and systemd
  already orders a unit after its mounts (``RequiresMountsFor=``).
* A ``[[clients]]`` directory that does not exist yet (its training job has not started) is not
  created either, and is not fatal: one client must not keep the daemon from protecting the
  others. It is a warning in the log and in ``chunkd status``, and the reconciliation scan adds
  the client once the directory appears. A path that can never be a directory (a regular file in
  it) is a config error.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path
from typing import Final

from chunkd import tenancy
from chunkd.errors import ConfigError

#: What :func:`missing_directory` says of a path that is simply not there (yet).
DOES_NOT_EXIST: Final = "does not exist"


def missing_directory(path: Path) -> str | None:
    """None if ``path`` is a directory; else what is wrong with it, worded for a one-line reason."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return DOES_NOT_EXIST
    except NotADirectoryError:
        return "cannot exist: Not a directory (a file is in its path)"
    except OSError as e:
        return f"cannot be examined: {e.strerror}"
    return None if stat.S_ISDIR(st.st_mode) else "is not a directory: Not a directory"


def ensure_watch_root(root: Path, *, may_create: bool) -> bool:
    """Check ``watch_root``; create it only when ``may_create`` (the built-in defaults). True if
    it was created. ConfigError (``watch_root: <path> ...``, exit 78) when it cannot be used."""
    problem = missing_directory(root)
    if problem is None:
        return False
    if not may_create or problem != DOES_NOT_EXIST:
        hint = "; create it or correct the path" if problem == DOES_NOT_EXIST else ""
        raise ConfigError(f"watch_root: {root} {problem}{hint} (nothing was created)")
    root.mkdir(parents=True, exist_ok=True)
    return True


def client_dir_warning(index: int, directory: Path) -> str | None:
    """None if the ``[[clients]]`` entry's directory can be watched now; else the warning to
    show while it does not exist. ConfigError (``clients[i].dir: ...``) if it never can."""
    problem = missing_directory(directory)
    if problem is None:
        return None
    if problem != DOES_NOT_EXIST:
        raise ConfigError(f"clients[{index}].dir: {directory} {problem}")
    return f"clients[{index}].dir {directory} does not exist; watched once it appears"


def reading_group_warning() -> str | None:
    """:func:`chunkd.tenancy.reading_group_warning` for the running daemon's group. Not checked
    when the daemon runs as root (development, tests): its group is not the layout's."""
    if os.geteuid() == 0:
        return None
    try:
        group = grp.getgrgid(os.getegid())
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # an id without a name: no layout to judge
        return None
    return tenancy.reading_group_warning(group.gr_name, list(group.gr_mem), user)
