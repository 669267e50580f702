"""Plain types of a worker as the cluster sees it: what it is, how loaded, and the membership
timings every party derives its own from. No redis, no torch: the router's conductor decides over
these, and the simulator builds them.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("prefill", "decode", "colocated")
PREFILL_ROLES = ("prefill", "colocated")  # roles that take prompts (a GenerateTask)
TRANSFER_KINDS = ("kv_send", "kv_recv", "store_put", "store_fetch")


@dataclass(frozen=True)
class Membership:
    """The timings of worker membership that must agree across processes, in seconds.

    A worker heartbeats every ``heartbeat_s``; its lease lapses ``lease_ttl_s`` after the last
    beat. Everything else is derived: the router's view of the cluster is unusable once older
    than one lease; a worker missing from that view for ``lost_grace_s`` has failed its requests
    (the grace rides out a Redis restart); a worker that failed a request gets no new ones for
    ``suspect_s``, longer than a lease, so a dead one has left the registry by the time it would be
    tried again. An abort is remembered for ``abort_memory_s`` by whoever cannot deliver or apply
    it yet (the router for a missing worker, a decode worker for a hand-off still on its way).
    """

    heartbeat_s: float = 0.5
    lease_ttl_s: float = 3.0
    abort_memory_s: float = 600.0

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_s < self.lease_ttl_s:
            raise ValueError(
                f"need 0 < heartbeat_s < lease_ttl_s, got {self.heartbeat_s} and {self.lease_ttl_s}"
            )
        if self.abort_memory_s <= 0:
            raise ValueError(f"abort_memory_s must be positive, got {self.abort_memory_s}")

    @property
    def stale_after_s(self) -> float:
        return self.lease_ttl_s

    @property
    def lost_grace_s(self) -> float:
        return 2 * self.heartbeat_s

    @property
    def suspect_s(self) -> float:
        return self.lease_ttl_s + 4 * self.heartbeat_s

    @property
    def drain_notice_s(self) -> float:
        """How long a draining worker stays reachable at least: a router routes only by a view
        younger than ``stale_after_s``, so past this every router has seen it draining and sends
        it nothing new (a hand-off routed just before may still be on its way)."""
        return self.stale_after_s


MEMBERSHIP = Membership()


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker is; fixed for its lifetime."""

    worker_id: str
    role: str  # one of ROLES
    address: str  # its inbox (transfer.channel)
    model: str  # served model name
    fingerprint: str  # hex of the KV fingerprint (chunk keys are only shared between equal ones)
    page_size: int
    chunk_tokens: int
    max_model_len: int
    store_node_id: str = ""  # the store node it writes chunks to ("" = none)
    kv_bytes_per_token: int = 0  # KV bytes of one token (what a store fetch moves); 0 = unknown
    # drawn at each process start: a worker restarted under its old name is another incarnation,
    # and the requests the old one held are lost even if the name never left the registry
    incarnation: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")

    @property
    def instance_key(self) -> str:
        """This incarnation of the worker: ``worker_id#incarnation`` (the id alone if it has none)."""
        return f"{self.worker_id}#{self.incarnation}" if self.incarnation else self.worker_id


def worker_id_of(instance_key: str) -> str:
    """The worker id inside a ``WorkerInfo.instance_key``."""
    return instance_key.rpartition("#")[0] or instance_key


@dataclass(frozen=True)
class WorkerTotals:
    """What a worker counted since it started (a restarted worker starts again from zero).

    ``prompt_tokens`` of the requests it prefilled (prefill / colocated), of which
    ``cached_local_tokens`` came from its own pages and ``cached_store_tokens`` from a store node;
    bytes and seconds of each transfer kind (``TRANSFER_KINDS``): prompt KV sent to decode workers
    and taken from prefill workers, chunks written to its store node and fetched from store nodes.
    Seconds are the worker's own time in the transfer (packing, round trip, unpacking).
    """

    prompt_tokens: int = 0
    cached_local_tokens: int = 0
    cached_store_tokens: int = 0
    kv_send_bytes: int = 0
    kv_send_s: float = 0.0
    kv_recv_bytes: int = 0
    kv_recv_s: float = 0.0
    store_put_bytes: int = 0
    store_put_s: float = 0.0
    store_fetch_bytes: int = 0
    store_fetch_s: float = 0.0


@dataclass(frozen=True)
class WorkerLoad(WorkerTotals):
    """A worker's load at ``updated_at`` (time.time()): its totals, and its engine's load.

    The engine's part has exactly the fields of ``engine.types.EngineLoad`` (queue, pages, the
    fitted step line; see there), which this module cannot import: the router reads these types
    without loading the engine. ``worker.base.load_report`` builds one from the two parts, and a
    test holds the field sets equal.

    ``draining``: the worker is shutting down gracefully. It is live (its requests are still
    served, so they are not lost) but takes no new ones: the router routes nothing new to it.
    """

    num_running: int = 0
    num_waiting: int = 0
    queued_prefill_tokens: int = 0
    free_pages: int = 0
    total_pages: int = 0
    step_ms: float = 0.0
    step_fixed_s: float = 0.0
    step_per_token_s: float = 0.0
    step_samples: int = 0
    updated_at: float = 0.0
    draining: bool = False


@dataclass(frozen=True)
class WorkerState:
    info: WorkerInfo
    load: WorkerLoad
