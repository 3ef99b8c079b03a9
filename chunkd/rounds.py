"""Which round a checkpoint belongs to (docs/SPEC.md, "Rounds").

FL clients say the round in three ways, tried in this order of precedence:

1. a number in the file name, found by ``round_regex`` (:func:`round_from_name`): the most explicit
   signal, and the only one that does not need the file's contents;
2. an integer ``cur_round`` / ``round`` / ``server_round`` / ``epoch`` at the top of the checkpoint
   (:func:`round_from_fields`), e.g. FederatedScope's ``{'cur_round': r, 'model': ...}``;
3. nothing: a client that overwrites one file every round gets one more than its highest stored
   round (:func:`choose_round`).

This module is pure (no I/O, no clock): the ingest path gives it a base name, the top-level object
that :mod:`chunkd.pickle_scan` read, and the client's highest stored round. It must not import
:mod:`chunkd.config`; config imports :data:`DEFAULT_ROUND_REGEX` from here.

A round number is an integer in ``[0, MAX_ROUND]`` so that it fits SQLite's signed 64-bit
``round_num`` column; anything bigger is treated as "no round" rather than wrapped or truncated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from chunkd.errors import CheckpointError

#: The default ``round_regex``. Tried with ``re.search`` on the file's base name, ignoring case;
#: the ``round`` group is the number. It accepts a number that
#:
#: * follows a round word (``round``, ``rnd``, ``r``, ``epoch``, ``ep``) at the start of the name or
#:   after ``_``/``.``/``-``, optionally joined by ``_``, ``-`` or ``=``: ``model_round_12.pth``,
#:   ``round-12.pt``, ``r12.pth``, ``epoch12.pth``, ``client_3_round_12.pth``, Lightning's
#:   ``epoch=3-step=1200.ckpt`` (3);
#: * starts the name and has at most 6 digits: ``12_model.pt``, ``12.pth``;
#: * ends the name (before the extension, if any), has at most 6 digits and follows ``_``:
#:   ``model_12.pt`` -- unless the word before names a participant (``client_3.pth``,
#:   ``site_2``, ``node_1``, ``rank_0``, ``worker_4``, ``party_1``) or a shard (``_of_00004``);
#: * ends the name after ``-`` only behind ``model``, ``checkpoint`` or ``ckpt`` (``model-12.pt``,
#:   Hugging Face's ``checkpoint-500``), because ``resnet-50``, ``vgg-16`` or ``gpt-2`` name an
#:   architecture, not a round.
#:
#: The number must end at a separator or the end of the name, so ``resnet18.pth``, ``t5-small.pt``,
#: ``model_bf16.pt`` and ``model_v2.pth`` have no round. Bare counters stop at 6 digits so that a
#: date (``ckpt-20240601``) or a Unix time (``run_1717200000``) cannot pose as one; whatever the
#: pattern, :func:`round_from_name` also skips a number that is part of a date or timestamp
#: (:data:`DATE_OR_TIME`).
DEFAULT_ROUND_REGEX: str = (
    r"(?i)(?:"
    r"(?:^|[_.-])(?:round|rnd|r|epoch|ep)[_=-]?"
    r"|^(?=\d{1,6}(?:[_.=-]|$))"
    r"|(?<!client)(?<!site)(?<!node)(?<!rank)(?<!worker)(?<!party)(?<![_-]of)"
    r"_(?=\d{1,6}(?:\.\w+)?$)"
    r"|(?:model|checkpoint|ckpt)-(?=\d{1,6}(?:\.\w+)?$)"
    r")(?P<round>\d+)(?=[_.=-]|$)"
)

#: A date or a timestamp inside a name: ``2024-06-01``, ``2024_06_01``, ``20240601``, optionally
#: with a time (``20240601T1230``, ``2024-06-01_12-30-00``), a year and month (``2024-06``), or
#: Unix time in s/ms/us/ns from 2001 to 2033 (``1717200000``). A round number never lies inside
#: one (docs/SPEC.md "Rounds"). Six-digit ``YYMMDD`` forms are not dates here: they are as likely to
#: be step counters (``checkpoint-240000``).
DATE_OR_TIME: re.Pattern[str] = re.compile(
    r"""
    (?<!\d)
    (?:
        (?:19|20)\d\d (?P<sep>[-_.]?) (?:0[1-9]|1[0-2]) (?P=sep) (?:0[1-9]|[12]\d|3[01])
        (?: [tT_ -]? (?:[01]\d|2[0-3]) [-_:.]? [0-5]\d (?: [-_:.]? [0-5]\d )? )?
      | (?:19|20)\d\d [-_.] (?:0[1-9]|1[0-2]) (?![-_.]?\d)
      | 1\d{9} (?:\d{3}){0,3}
    )
    (?!\d)
    """,
    re.VERBOSE,
)

#: The largest round number: SQLite stores ``round_num`` as a signed 64-bit integer.
MAX_ROUND: int = 2**63 - 1

#: Top-level checkpoint keys that carry the round, most specific first.
ROUND_FIELDS: tuple[str, ...] = ("cur_round", "round", "server_round", "epoch")

#: The round given to a client's first checkpoint when neither its name nor its contents say.
#: 1, not 0: the sequence counts checkpoints seen (1st, 2nd, ...), as Flower counts server rounds.
FIRST_ROUND: int = 1

# 19 digits hold every value up to MAX_ROUND; longer digit strings (after leading zeros) never fit,
# and checking the length first keeps int() away from its 4300-digit conversion limit.
_MAX_ROUND_DIGITS = len(str(MAX_ROUND))


def round_from_name(name: str, pattern: re.Pattern[str]) -> int | None:
    """The round number in a file name, or None if ``pattern`` finds none.

    ``name`` may be a base name or a path; only the part after the last ``/`` is searched, so a
    directory such as ``client_3/`` can never supply the round. The first match that is not part
    of a date or timestamp (:data:`DATE_OR_TIME`) counts. Its ``round`` group must be ASCII digits
    (``int()`` would also take ``+1``, ``1_0`` or Arabic-Indic digits, which no FL framework
    writes) and at most :data:`MAX_ROUND`; otherwise the name has no round and the next rule in
    :func:`choose_round` applies. Never raises for any ``name``.

    Raises ValueError if ``pattern`` has no group named ``round`` (config validates that).
    """
    if "round" not in pattern.groupindex:
        raise ValueError(f"round pattern {pattern.pattern!r} has no group named 'round'")
    base = name.rpartition("/")[2]
    dates = [m.span() for m in DATE_OR_TIME.finditer(base)]
    for match in pattern.finditer(base):
        start, end = match.span("round")
        if start < 0 or any(lo < end and start < hi for lo, hi in dates):
            continue  # no round group, or part of a date: the next match may still name a round
        return _parse_round(match.group("round"))
    return None


def _parse_round(digits: str) -> int | None:
    """ASCII digits as a round number, or None if they are not or do not fit."""
    if not (digits.isascii() and digits.isdigit()):
        return None
    significant = digits.lstrip("0") or "0"
    if len(significant) > _MAX_ROUND_DIGITS:
        return None
    value = int(significant)
    return value if value <= MAX_ROUND else None


def round_from_fields(top: object) -> int | None:
    """The round stored at the top of a checkpoint, or None.

    ``top`` is the checkpoint's top-level object as :mod:`chunkd.pickle_scan` rebuilt it. Only a
    mapping can carry a round; its :data:`ROUND_FIELDS` are tried in order and the first whose value
    is a usable round wins. A key whose value is not an ``int`` (a bool, a float, a tensor, None) or
    is outside ``[0, MAX_ROUND]`` is skipped rather than fatal: the field is a hint that some
    containers reuse for other things, and the sequence rule is a safe fallback.
    """
    if not isinstance(top, Mapping):
        return None
    for key in ROUND_FIELDS:
        value = top.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ROUND:
            return int(value)
    return None


def choose_round(
    name_round: int | None, field_round: int | None, highest_stored: int | None
) -> int:
    """The round number to store a checkpoint under, by the precedence of docs/SPEC.md, "Rounds".

    The name's round wins over the checkpoint's field; with neither, the checkpoint continues the
    client's sequence: ``highest_stored + 1``, or :data:`FIRST_ROUND` (1) for a client with nothing
    stored yet. ``name_round`` and ``field_round`` come from :func:`round_from_name` and
    :func:`round_from_fields`, so they are already in range.

    Raises CheckpointError if the sequence would pass :data:`MAX_ROUND` (only possible after a file
    named with the largest round there is); the file is then rejected, never stored under a
    wrapped number.
    """
    if name_round is not None:
        return name_round
    if field_round is not None:
        return field_round
    if highest_stored is None:
        return FIRST_ROUND
    if highest_stored >= MAX_ROUND:
        raise CheckpointError(
            f"no round in the file name or contents, and the highest stored round "
            f"{highest_stored} leaves no next round number"
        )
    return highest_stored + 1
