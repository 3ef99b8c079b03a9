"""libFuzzer (atheris) harness for chunkd's checkpoint reader; ``test_fuzz_reader.py`` runs it.

Each input is put in a memfd and parsed exactly as the daemon parses a file
(:func:`chunkd.checkpoint.parse_checkpoint`: zip layout, local headers, CRCs of the small
records, the pickle walker), then chunked (:func:`chunkd.flatindex.plan_chunks`). A
:class:`~chunkd.errors.CheckpointError` is the one acceptable failure; any other exception,
a hang (``-timeout``) or a memory blow-up (``-rss_limit_mb``) is a finding.

    python tests/reliability/atheris_reader.py -runs=100000 CORPUS_DIR
"""

from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports():
    from chunkd.checkpoint import parse_checkpoint
    from chunkd.errors import CheckpointError
    from chunkd.flatindex import plan_chunks


def one_input(data: bytes) -> None:
    fd = os.memfd_create("case", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        try:
            parsed = parse_checkpoint(fd, len(data))
            plan_chunks(parsed.storages, 4, 4096)
        except CheckpointError:
            return
    finally:
        os.close(fd)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
