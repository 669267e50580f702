"""The KV store: a pool of host memory across store nodes, indexed in Redis.

- ``keys``: the hash-chain key of a chunk (torch-free; the engine imports it).
- ``client.StoreClient``: put / get / match_prefix / nodes, for workers and the router (a node on
  this host in place, through its mapped arena; others over the socket).
- ``index``: the Redis index (torch-free reads for the router); ``node`` / ``node_main``: a node.
- ``pool`` / ``arena``: the node's memory; ``embedded_redis``: a private Redis for local use.
- ``sizes``: byte sizes as command lines write them (``4GiB``), importable without the rest.

Attributes are imported lazily so that ``import kvstore.keys`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "StoreClient": "kvstore.client",
    "NodeInfo": "kvstore.types",
    "StoreError": "kvstore.types",
    "NodeUnavailable": "kvstore.types",
    "IndexUnavailable": "kvstore.types",
    "EmbeddedRedis": "kvstore.embedded_redis",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'kvstore' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
