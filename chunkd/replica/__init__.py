"""Off-host replicas of stored rounds on S3-compatible object storage (docs/REPLICA.md).

``layout`` (keys, manifests; pure) <- ``bucket`` (boto3, the only S3 client code) <- ``upload``
(one round: chunks, then manifest), ``fetch`` (list, restore byte-identical), ``prune`` (replica
retention and the shared chunk sweep, under lock objects). The daemon's upload stage is
:mod:`chunkd.daemon.replication`; the CLI's ``--replica`` forms are :mod:`chunkd.cli.replica`.
Importing this package does not import boto3; its submodules ``bucket`` and above do.
"""
