"""The ``[replica]`` table (docs/REPLICA.md): where the off-host copies go. Credentials are
refused here: they come from boto3's standard chain."""

from __future__ import annotations

import re

from chunkd.config.keys import (
    _check_known_keys,
    _Context,
    _parse_duration_key,
    _parse_int,
    _parse_string,
)
from chunkd.config.model import ReplicaConfig
from chunkd.config.values import MAX_KEEP_ROUNDS, _describe, parse_size
from chunkd.errors import ConfigError

_REPLICA_URL = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\0]*)?")


_REPLICA_HOST = re.compile(r"[A-Za-z0-9_.-]{0,128}")


_REPLICA_SECRETS = ("access_key", "secret_key", "aws_access_key_id", "aws_secret_access_key")


def _parse_replica(ctx: _Context, key: str, value: object) -> ReplicaConfig | None:
    if not isinstance(value, dict):
        ctx.fail(key, f"must be a table ([replica]), got {_describe(value)}")
    for name in value:
        if name in _REPLICA_SECRETS or "secret" in name or "password" in name:
            ctx.fail(
                f"{key}.{name}",
                "credentials never go in the config file; use the environment, ~/.aws or an "
                "instance role",
            )
    known = (
        "url", "endpoint", "region", "host", "replica_keep_rounds", "max_upload_rate",
        "prune_interval", "gc_grace",
    )  # fmt: skip
    _check_known_keys(ctx, value, known, prefix=f"{key}.")
    if not value:
        return None
    if "url" not in value:
        ctx.fail(f"{key}.url", "missing (s3://bucket/prefix)")
    url = _parse_string(ctx, f"{key}.url", value["url"])
    segments = url[len("s3://") :].rstrip("/").split("/")[1:]
    if _REPLICA_URL.fullmatch(url) is None or any(p in ("", ".", "..") for p in segments):
        ctx.fail(f"{key}.url", f"must look like s3://bucket/prefix, got {url!r}")
    endpoint = _parse_string(ctx, f"{key}.endpoint", value.get("endpoint", ""))
    if endpoint and not re.fullmatch(r"https?://[^\s/]+/?", endpoint):
        ctx.fail(f"{key}.endpoint", f"must be http(s)://host[:port], got {endpoint!r}")
    host = _parse_string(ctx, f"{key}.host", value.get("host", ""))
    if _REPLICA_HOST.fullmatch(host) is None or host in (".", ".."):
        ctx.fail(f"{key}.host", f"must be 0 to 128 of A-Z a-z 0-9 _ . -, got {host!r}")
    try:
        rate = parse_size(value.get("max_upload_rate", 0))  # type: ignore[arg-type]
    except ConfigError as e:
        ctx.fail(f"{key}.max_upload_rate", f"{e} (bytes per second; 0 = unlimited)")
    duration = _parse_duration_key(allow_zero=True)
    return ReplicaConfig(
        url=url.rstrip("/"),
        endpoint=endpoint.rstrip("/"),
        region=_parse_string(ctx, f"{key}.region", value.get("region", "")),
        host=host,
        replica_keep_rounds=_parse_int(0, MAX_KEEP_ROUNDS)(
            ctx, f"{key}.replica_keep_rounds", value.get("replica_keep_rounds", 0)
        ),
        max_upload_rate=rate,
        prune_interval_s=duration(ctx, f"{key}.prune_interval", value.get("prune_interval", "1h")),
        gc_grace_s=duration(ctx, f"{key}.gc_grace", value.get("gc_grace", "1h")),
    )
