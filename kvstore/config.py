"""Configuration of a store node."""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.index import DEFAULT_PREFIX

MiB = 1 << 20


@dataclass(frozen=True)
class StoreNodeConfig:
    """Everything a store node needs; validated on construction.

    ``listen`` is the address to bind (``tcp://HOST:0`` picks a free port); ``advertise`` is the
    address other processes use to reach the node, by default the bound one (required when
    binding a wildcard host). ``slot_bytes`` 0 sizes the slots to the first chunk stored.
    ``chunk_bytes`` (0: any size that fits a slot) is the one chunk size the node accepts, and its
    slot size: a deployment that knows its model's KV layout (``tandem up`` does) sets it, so that
    no client's message can choose the node's geometry or store a chunk of another size.
    The node's lease lapses ``heartbeat_ttl_s`` after its last heartbeat; it heartbeats three
    times per TTL. A chunk being sent stays pinned while the reader makes progress; a reader that
    accepts no bytes for ``read_lease_s`` is disconnected, which releases its pins.
    ``disk_path`` (None: no disk tier) is a directory where chunks evicted from memory are kept, up
    to ``disk_capacity_bytes``; a node started on a path a previous one used adopts its chunks.
    A chunk fetched more than ``replicate_after`` times within ``replicate_window_s`` is copied to
    another live node (``kvstore.replication``; 0: never). With ``shared_memory``, clients on the
    node's host map its arena and copy chunks in and out themselves (``transfer.shared_memory``); an in-place
    transfer's chunks are pinned for at most ``in_place_lease_s`` after its reply leaves (the copy
    takes milliseconds; a client that vanished meanwhile cannot be noticed sooner, as ZeroMQ does
    not tell a ROUTER which peer left).
    """

    node_id: str
    listen: str
    redis_url: str
    capacity_bytes: int
    slot_bytes: int = 0
    chunk_bytes: int = 0
    advertise: str | None = None
    heartbeat_ttl_s: float = 5.0
    evict_watermark: float = 0.9
    read_lease_s: float = 30.0
    in_place_lease_s: float = 5.0
    max_frame_bytes: int = 256 * MiB
    index_prefix: str = DEFAULT_PREFIX
    disk_path: str | None = None
    disk_capacity_bytes: int = 0
    replicate_after: int = 0  # copy a chunk fetched more than this often within the window (0: never)
    replicate_window_s: float = 10.0
    shared_memory: bool = True  # clients on this host may map the arena (``transfer.shared_memory``)

    def __post_init__(self) -> None:
        if not self.node_id or any(c.isspace() for c in self.node_id):
            raise ValueError(f"node_id must be a non-empty word, got {self.node_id!r}")
        if not self.listen.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(
                f"listen must be a ZeroMQ address like tcp://127.0.0.1:5600, got {self.listen!r}"
            )
        if self.advertise is None and any(h in self.listen for h in ("//0.0.0.0:", "//*:")):
            raise ValueError(f"listening on {self.listen} needs advertise=tcp://<reachable host>:<port>")
        if self.capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be positive, got {self.capacity_bytes}")
        if not 0 <= self.slot_bytes <= self.capacity_bytes:
            raise ValueError(f"slot_bytes must be in [0, capacity_bytes], got {self.slot_bytes}")
        if self.chunk_bytes < 0 or (self.chunk_bytes and self.slot_bytes not in (0, self.chunk_bytes)):
            raise ValueError(
                f"chunk_bytes must be 0 or positive and equal slot_bytes when both are set, "
                f"got chunk_bytes={self.chunk_bytes}, slot_bytes={self.slot_bytes}"
            )
        if self.slot_bytes > self.max_frame_bytes:
            raise ValueError(f"slot_bytes {self.slot_bytes} exceeds max_frame_bytes {self.max_frame_bytes}")
        if self.heartbeat_ttl_s <= 0:
            raise ValueError(f"heartbeat_ttl_s must be positive, got {self.heartbeat_ttl_s}")
        if self.read_lease_s <= 0 or self.in_place_lease_s <= 0:
            raise ValueError(
                f"read_lease_s and in_place_lease_s must be positive, got {self.read_lease_s}, "
                f"{self.in_place_lease_s}"
            )
        if self.disk_path is not None and self.disk_capacity_bytes <= 0:
            raise ValueError(
                f"a disk tier needs a positive disk_capacity_bytes, got {self.disk_capacity_bytes}"
            )
        if self.disk_path is None and self.disk_capacity_bytes:
            raise ValueError("disk_capacity_bytes is set but disk_path is not")
        if self.replicate_after < 0 or self.replicate_window_s <= 0:
            raise ValueError(
                f"replicate_after must be >= 0 and replicate_window_s > 0, got {self.replicate_after}, "
                f"{self.replicate_window_s}"
            )
        if not 0 < self.evict_watermark <= 1:
            raise ValueError(f"evict_watermark must be in (0, 1], got {self.evict_watermark}")

    @property
    def slot_size(self) -> int | None:
        """The arena's slot size: fixed by ``chunk_bytes`` or ``slot_bytes``, else by the first chunk."""
        return self.chunk_bytes or self.slot_bytes or None

    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_ttl_s / 3
