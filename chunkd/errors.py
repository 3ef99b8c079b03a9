"""The one exception tree of chunkd.

Every error a user can see is a :class:`ChunkdError`. Each class carries the socket error ``code``
(docs/SPEC.md, "The socket protocol") and the CLI ``exit_status``; the server maps an error to an
answer with :attr:`ChunkdError.code` and the CLI maps an answer back to an exit status with
:data:`EXIT_STATUS_BY_CODE`. The numbers are published in the README: never renumber them.

This module imports nothing from chunkd, so every layer can raise these.
"""

from __future__ import annotations


class ChunkdError(Exception):
    """Base of every chunkd error; anything else reaching a boundary is a bug (``internal``)."""

    code = "internal"
    exit_status = 1


class ConfigError(ChunkdError, ValueError):
    """The configuration is invalid; the message names the key and the problem."""

    code = "bad_config"
    exit_status = 78  # EX_CONFIG; the systemd unit sets RestartPreventExitStatus=78


class RequestError(ChunkdError, ValueError):
    """A request (socket line or CLI arguments) is malformed."""

    code = "bad_request"
    exit_status = 2


class UnknownCommandError(RequestError):
    code = "unknown_command"
    exit_status = 2


class NotFoundError(ChunkdError, LookupError):
    """A client, round or chunk that does not exist."""

    code = "not_found"
    exit_status = 3


class CheckpointError(ChunkdError, ValueError):
    """A file is not a checkpoint chunkd can take.

    ``retryable`` is true where the file may simply still be being written (truncated, CRC
    mismatch, changed while read); the daemon retries those with backoff before rejecting.
    """

    code = "bad_checkpoint"
    exit_status = 4
    retryable = False


class NotACheckpointError(CheckpointError):
    """Not a zip at all, or a zip that does not have the layout ``torch.save`` writes."""


class TruncatedError(CheckpointError):
    """The file ends early: it may still be being written."""

    retryable = True


class CrcMismatchError(CheckpointError):
    """A record's bytes do not match the CRC-32 in the central directory."""

    retryable = True


class FileChangedError(CheckpointError):
    """The file changed (size or mtime) while it was being read."""

    retryable = True


class LegacyFormatError(CheckpointError):
    """A pre-1.6 (non-zip) ``torch.save`` file, or a zip feature torch never writes."""


class UnsafePickleError(CheckpointError):
    """``data.pkl`` asks for something outside the allow-list; it is refused, never executed."""


class RoundConflictError(CheckpointError):
    """A different file claims a round that is already stored: it never silently takes the
    round's place. Store it under another number with ``chunkd ingest --round N``."""


class IntegrityError(ChunkdError):
    """Stored bytes do not match their recorded hash. Never retried, never papered over."""

    code = "integrity"
    exit_status = 5


class ForbiddenError(ChunkdError, PermissionError):
    code = "forbidden"
    exit_status = 6


class BusyError(ChunkdError):
    """The queue is full, the daemon is stopping, or another writer holds the database."""

    code = "busy"
    exit_status = 7


class StoreError(ChunkdError):
    """The database failed underneath us (SQLite error, disk full, read-only file)."""

    code = "internal"
    exit_status = 1


class DaemonUnavailableError(ChunkdError):
    """CLI only: nothing answers on the socket."""

    code = "unavailable"
    exit_status = 8


ERROR_CLASSES: tuple[type[ChunkdError], ...] = (
    ChunkdError,
    ConfigError,
    RequestError,
    UnknownCommandError,
    NotFoundError,
    CheckpointError,
    IntegrityError,
    ForbiddenError,
    BusyError,
    DaemonUnavailableError,
)

#: socket error code -> CLI exit status; the CLI's single mapping from an answer to an exit.
EXIT_STATUS_BY_CODE: dict[str, int] = {cls.code: cls.exit_status for cls in ERROR_CLASSES}

#: socket error code -> the class the CLI raises for it.
CLASS_BY_CODE: dict[str, type[ChunkdError]] = {cls.code: cls for cls in reversed(ERROR_CLASSES)}
