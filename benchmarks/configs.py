"""The chunkd configurations the benchmarks measure, by name; ``default`` is what ships.

Every phase that measures chunkd's library or daemon takes a name from here rather than
spelling a codec config itself, so a figure labelled ``default`` is always the built-in
configuration of the code being measured (``chunkd.config.load_settings(None)``: the
defaults of docs/SPEC.md, "Config (TOML)"), whatever those become. Other names are explicit:
``none`` (no compression, no delta:
a seed-style raw ``chunk_data``), ``auto``, ``auto+delta``, ``max``, ``max+delta``.

Imports chunkd only (never torch): measured child processes use it.
"""

from __future__ import annotations

import dataclasses

from chunkd.config import load_settings
from chunkd.config.model import Settings
from chunkd.deltas import RECENT
from chunkd.ingest import IngestOptions

DEFAULT = "default"
NAMES = ("none", "auto", "auto+delta", "max", "max+delta", DEFAULT)


def defaults() -> Settings:
    """The built-in settings (no config file): what ``chunkd serve`` runs with out of the box."""
    return load_settings(None)


def options(name: str = DEFAULT) -> IngestOptions:
    """The ingest options of ``name``: the defaults, with only the codec config changed."""
    s = defaults()
    base = IngestOptions(
        chunk_num=s.chunk_num,
        max_chunk_bytes=s.max_chunk_bytes,
        compression=s.compression,
        delta=s.delta,
        round_regex=s.round_regex,
    )
    if name == DEFAULT:
        return base
    compression, _, delta = name.partition("+")
    if compression not in ("none", "auto", "max") or delta not in ("", "delta"):
        raise ValueError(f"unknown config {name!r}; one of {', '.join(NAMES)}")
    return dataclasses.replace(base, compression=compression, delta=bool(delta))


def daemon_keys(name: str = DEFAULT) -> dict[str, object]:
    """Config-file keys for ``name``: nothing for the defaults (the daemon fills them in)."""
    if name == DEFAULT:
        return {}
    opts = options(name)
    return {"compression": opts.compression, "delta": opts.delta}


def prepare_cache(opts: IngestOptions) -> None:
    """Empty the recent-chunk cache and size it as the daemon does (``delta_cache``, only with
    delta), so one measurement never reads chunks an earlier one left in this process."""
    RECENT.clear()
    RECENT.resize(defaults().delta_cache_bytes if opts.delta else 0)


def describe(name: str = DEFAULT) -> str:
    """``compression='auto', delta=True, delta_cache=64 MiB`` for the report."""
    opts = options(name)
    text = f"compression={opts.compression!r}, delta={opts.delta}"
    if opts.delta:
        text += f", delta_cache={defaults().delta_cache_bytes >> 20} MiB"
    return text
