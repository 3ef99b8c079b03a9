"""chunkd: deduplicating checkpoint store for federated-learning clients.

The package is layered; imports only point down:
``errors`` <- ``manifest`` <- pure modules (``pthzip``, ``pickle_scan``, ``flatindex``, ``codec``,
``rounds``, ``retention``, ``protocol``) <- ``store`` <- engine (``ingest``, ``restore``, ``verify``,
``export``) <- ``daemon`` and ``cli``.
"""

__version__ = "0.1.0"
