"""chunkd: deduplicating checkpoint store for federated-learning clients.

The package is layered; imports only point down (``tests/test_layers.py`` enforces it):
``errors`` <- ``manifest`` <- pure modules (``pthzip``, ``pickle_scan``, ``flatindex``,
``codec``, ``rounds``, ``retention``, ``protocol``) <- ``config``, ``log`` <- ``store`` <- engine
(``checkpoint``, ``ingest``, ``restore``, ``prune``, ``verify``, ``export``, ``summary``) <-
``daemon`` and ``cli``.
"""

__version__ = "0.1.0"
