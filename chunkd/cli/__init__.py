"""The ``chunkd`` command line: one module per command, ``main.py`` wires them together.

Every command that talks to the daemon does so through :mod:`chunkd.cli.client`; the offline
``--db`` forms call the same engine functions the daemon does, so both print the same results.
"""
