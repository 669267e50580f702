"""Plain domain types of the store: node descriptions and the errors callers act on (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass


class StoreError(RuntimeError):
    """The store could not serve a request; for a reader this means "recompute instead"."""


class NodeUnavailable(StoreError):
    """A node the index lists as live did not answer (dead, unreachable or stalled)."""


class IndexUnavailable(StoreError):
    """The Redis index could not be reached."""


@dataclass(frozen=True)
class NodeInfo:
    """A live store node as published in the index. ``bytes_used`` counts whole arena slots;
    ``hits`` / ``misses`` count keys asked of it by ``get`` (published with each heartbeat);
    ``num_chunks`` counts the memory tier's chunks, ``disk_chunks`` the disk tier's (a chunk read
    back into memory keeps its file, so it may count in both)."""

    node_id: str
    address: str
    capacity_bytes: int
    bytes_used: int
    num_chunks: int
    hits: int
    misses: int
    num_evicted: int
    num_pinned: int = 0  # chunks held for readers whose bytes are still being sent (the pins' leases)
    disk_capacity_bytes: int = 0  # the disk tier's, 0 without one
    disk_bytes_used: int = 0
    disk_chunks: int = 0
    disk_hits: int = 0  # chunks read back from disk (also counted in ``hits``)
    disk_evicted: int = 0  # chunk files deleted to stay under the disk capacity
    num_replicated: int = 0  # hot chunks this node copied to another node

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.bytes_used


def key_hex(key: bytes) -> str:
    """How a key is written in messages and logs."""
    return key.hex()
