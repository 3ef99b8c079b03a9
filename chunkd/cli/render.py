"""Human output: sizes, ratios, durations, aligned tables, ``--json``, and a progress bar.

Output for people goes to stdout, the progress bar to stderr and only when stderr is a terminal:
a pipe or a log file never receives carriage returns, and ``chunkd restore -o - | ...`` keeps
stdout for the checkpoint bytes.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")
#: The bar is redrawn at most this often; more would only cost the terminal.
_REDRAW_S = 0.1
_BAR_CELLS = 24


def format_bytes(n: int | float) -> str:
    """``512 B``, ``1.50 KiB``, ``40.3 MiB``: binary units, three significant digits."""
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _BYTE_UNITS:
        value /= 1024
        if value < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_ratio(ratio: float | None) -> str:
    """``3.42x``; ``-`` when there is no ratio (nothing stored)."""
    return "-" if ratio is None else f"{ratio:.2f}x"


def format_duration(seconds: float) -> str:
    """``850 ms``, ``12.3 s``, ``5m 12s``, ``3h 4m``, ``2d 5h``: two units at most."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """An aligned table; columns whose index is in ``right`` (numbers) are right-aligned."""
    return "\n".join(table_lines(headers, rows, right))


def table_lines(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]
) -> Iterator[str]:
    """:func:`format_table` one line at a time: a table of 10,000 clients is printed as it is
    rendered instead of being built whole first (only the column widths need every row)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    yield line(headers)
    for row in rows:
        yield line(row)


def format_pairs(pairs: Sequence[tuple[str, str]], indent: int = 0) -> str:
    """``key  value`` lines with the values aligned."""
    width = max((len(key) for key, _ in pairs), default=0)
    return "\n".join(f"{' ' * indent}{key.ljust(width)}  {value}" for key, value in pairs)


def removed_text(removed: dict[str, object]) -> str:
    """``directory /x removed at T; its database went with it: 5 rounds (1-5) lost``."""
    rounds = removed.get("rounds")
    numbers = [int(r) for r in rounds] if isinstance(rounds, list) else []
    count = _as_int(removed.get("round_count"))
    held = f"{count} round(s)" + (f" ({_span(numbers)})" if numbers else "")
    generations = _as_int(removed.get("generations"))
    if generations:
        held += f" and {generations} earlier generation(s)"
    text = f"directory {removed.get('dir')} removed at {removed.get('removed_at')}; "
    if removed.get("db_deleted"):
        text += f"its database went with it: {held} lost"
    else:
        text += f"its database {removed.get('db')} is kept ({held})"
    if removed.get("returned_at"):
        text += f"; the directory is back since {removed.get('returned_at')}"
    return text


def _span(numbers: list[int]) -> str:
    if len(numbers) > 6:
        return f"{numbers[0]}-{numbers[-1]}"
    return ", ".join(map(str, numbers))


def _as_int(value: object) -> int:
    return int(value) if isinstance(value, (int, float)) else 0


def print_json(document: object, stream: TextIO | None = None) -> None:
    """``--json`` output: one JSON document on stdout, stable key order, ending with a newline."""
    out = stream or sys.stdout
    out.write(json.dumps(document, indent=2) + "\n")
    out.flush()


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal: label, bar, %,
    done / total, rate and ETA (``restore [###---]  42%  1.2 GiB / 2.9 GiB  310 MiB/s  ETA 5 s``).
    Nothing at all on a pipe or a file. (Hand-written rather than tqdm: it is 60 lines, and the
    CLI's start-up stays free of imports it does not need.)

    ``total`` None draws a counter without a bar (the size is not known yet). ``fmt`` renders
    an amount (bytes by default). Use as a context manager: the line is cleared at the end.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        fmt: Callable[[int], str] = format_bytes,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self._fmt = fmt
        self._stream = stream or sys.stderr
        self.enabled = _is_tty(self._stream) if enabled is None else enabled
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, done: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn_at < _REDRAW_S:
            return
        self._drawn_at = now
        self._stream.write("\r\x1b[K" + self._line(done, now - self._started))
        self._stream.flush()
        self._drawn = True

    def _line(self, done: int, elapsed_s: float) -> str:
        parts = [self.label]
        if self.total:
            fraction = min(1.0, done / self.total)
            filled = int(fraction * _BAR_CELLS)
            parts.append("[" + "#" * filled + "-" * (_BAR_CELLS - filled) + "]")
            parts.append(f"{fraction * 100:3.0f}%")
            parts.append(f"{self._fmt(done)} / {self._fmt(self.total)}")
        else:
            parts.append(self._fmt(done))
        if elapsed_s > 0.5 and done > 0:
            rate = done / elapsed_s
            unit = "/s" if self._fmt is format_bytes else " /s"
            parts.append(f"{self._fmt(int(rate))}{unit}")
            if self.total and done < self.total:
                parts.append(f"ETA {format_duration((self.total - done) / rate)}")
        return "  ".join(parts)

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
