"""chunkd's benchmark suite: ``make bench`` or ``python -m benchmarks`` (see ``__main__``).

This package must stay importable without torch: the subprocesses that measure chunkd's own
ingest and restore run ``python -m benchmarks.chunkd_lib``, which imports this ``__init__``
first, and their memory figures would be meaningless with torch's ~300 MiB loaded.
"""
