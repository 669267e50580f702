"""Worker membership and load reports in Redis (torch-free: the router reads it).

Layout::

    tandem:workers            set   ids of registered workers
    tandem:worker:{id}        hash  WorkerInfo fields + load fields; expires after ``ttl_s``

A worker calls :meth:`WorkerRegistry.publish` every heartbeat with its info and current load;
the hash's TTL is refreshed each time, so a worker that dies drops out within ``ttl_s``. Readers
see only live workers and prune the ids of lapsed ones. Redis failures raise ``IndexUnavailable``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import redis

from kvstore.types import IndexUnavailable

PREFIX = "tandem:"
ROLES = ("prefill", "decode", "colocated")


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

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")


@dataclass(frozen=True)
class WorkerLoad:
    """A worker's load at ``updated_at`` (time.time())."""

    num_running: int = 0
    num_waiting: int = 0
    queued_prefill_tokens: int = 0
    free_pages: int = 0
    total_pages: int = 0
    step_ms: float = 0.0  # recent mean engine step time
    # the worker's fitted step time, seconds = step_fixed_s + step_per_token_s * tokens (see
    # engine.step_cost), over its last ~50 busy steps; step_samples = 0 until it has run one
    step_fixed_s: float = 0.0
    step_per_token_s: float = 0.0
    step_samples: int = 0
    updated_at: float = 0.0
    # Counters since the worker started (a restarted worker starts again from zero).
    prompt_tokens: int = 0  # prompt tokens of the requests it prefilled (prefill / colocated)
    cached_local_tokens: int = 0  # of those, served from its own pages
    cached_store_tokens: int = 0  # of those, fetched from a store node
    kv_send_bytes: int = 0  # prompt KV handed to decode workers
    kv_send_s: float = 0.0
    kv_recv_bytes: int = 0  # prompt KV taken from prefill workers
    kv_recv_s: float = 0.0
    store_put_bytes: int = 0  # chunks written to its store node
    store_put_s: float = 0.0
    store_fetch_bytes: int = 0  # chunks fetched from store nodes
    store_fetch_s: float = 0.0


TRANSFER_KINDS = ("kv_send", "kv_recv", "store_put", "store_fetch")


class WorkerCounters:
    """What a worker counts for its ``WorkerLoad``: the prompt tokens it prefilled and reused, and
    the bytes and seconds of each kind of KV transfer. Seconds are the worker's own time in the
    transfer (packing, the store's round trip, unpacking), not the wire time alone."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.cached_local_tokens = 0
        self.cached_store_tokens = 0
        self._transfer = {kind: [0, 0.0] for kind in TRANSFER_KINDS}

    def prefilled(self, prompt_tokens: int, cached_local: int, cached_store: int) -> None:
        """One request's prefill, as its first ``TokenEvent`` reports it to the router."""
        self.prompt_tokens += prompt_tokens
        self.cached_local_tokens += cached_local
        self.cached_store_tokens += cached_store

    def transferred(self, kind: str, nbytes: int, seconds: float) -> None:
        total = self._transfer[kind]
        total[0] += nbytes
        total[1] += seconds

    def fields(self) -> dict[str, int | float]:
        """These counters as ``WorkerLoad`` fields."""
        out: dict[str, int | float] = {
            "prompt_tokens": self.prompt_tokens,
            "cached_local_tokens": self.cached_local_tokens,
            "cached_store_tokens": self.cached_store_tokens,
        }
        for kind, (nbytes, seconds) in self._transfer.items():
            out[f"{kind}_bytes"] = nbytes
            out[f"{kind}_s"] = seconds
        return out


@dataclass(frozen=True)
class WorkerState:
    info: WorkerInfo
    load: WorkerLoad


class WorkerRegistry:
    def __init__(self, redis_url: str, ttl_s: float = 3.0) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.ttl_s = ttl_s
        self._redis = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2.0)

    def publish(self, info: WorkerInfo, load: WorkerLoad) -> None:
        key = f"{PREFIX}worker:{info.worker_id}"
        fields = {**dataclasses.asdict(info), **dataclasses.asdict(load), "updated_at": time.time()}
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.sadd(f"{PREFIX}workers", info.worker_id)
            pipe.hset(key, mapping={k: str(v) for k, v in fields.items()})
            pipe.pexpire(key, int(self.ttl_s * 1000))
            pipe.execute()
        except redis.RedisError as e:
            raise IndexUnavailable(f"cannot publish worker {info.worker_id}: {e}") from e

    def remove(self, worker_id: str) -> None:
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.srem(f"{PREFIX}workers", worker_id)
            pipe.delete(f"{PREFIX}worker:{worker_id}")
            pipe.execute()
        except redis.RedisError as e:
            raise IndexUnavailable(f"cannot remove worker {worker_id}: {e}") from e

    def live(self) -> list[WorkerState]:
        """Every worker whose heartbeat has not lapsed, sorted by id."""
        try:
            ids = sorted(self._redis.smembers(f"{PREFIX}workers"))
            pipe = self._redis.pipeline(transaction=False)
            for wid in ids:
                pipe.hgetall(f"{PREFIX}worker:{wid}")
            rows = pipe.execute()
            lapsed = [wid for wid, row in zip(ids, rows) if not row]
            if lapsed:
                self._redis.srem(f"{PREFIX}workers", *lapsed)
        except redis.RedisError as e:
            raise IndexUnavailable(f"cannot read workers: {e}") from e
        return [_state(row) for row in rows if row]

    def close(self) -> None:
        self._redis.close()


def _state(row: dict[str, str]) -> WorkerState:
    def parse(cls):
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in row:
                continue
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            kwargs[f.name] = (
                int(row[f.name]) if kind == "int" else float(row[f.name]) if kind == "float" else row[f.name]
            )
        return cls(**kwargs)

    return WorkerState(info=parse(WorkerInfo), load=parse(WorkerLoad))
