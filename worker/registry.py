"""Worker membership and load reports in Redis, on the store nodes' lease scheme (torch-free: the
router reads it).

Layout::

    tandem:workers               set     ids of registered workers
    tandem:worker:{id}           hash    WorkerInfo fields + WorkerLoad fields
    tandem:worker-alive:{id}     string  present while the worker heartbeats (TTL = the lease)

A worker calls :meth:`WorkerRegistry.publish` every heartbeat with its info and current load,
which renews its lease. Readers see only workers whose lease holds; the entries of lapsed ones are
removed by the same atomic read. Every Redis failure is raised as ``IndexUnavailable``.
"""

from __future__ import annotations

import dataclasses
import time

import redis

from kvstore.index import connect
from kvstore.types import IndexUnavailable
from worker.types import MEMBERSHIP, WorkerInfo, WorkerLoad, WorkerState

PREFIX = "tandem:"

# ARGV: prefix -> flat [[field, value, ...], ...] of every live worker; lapsed ones are deleted.
_LIVE = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', ARGV[1] .. 'workers')) do
  if redis.call('EXISTS', ARGV[1] .. 'worker-alive:' .. id) == 1 then
    out[#out + 1] = redis.call('HGETALL', ARGV[1] .. 'worker:' .. id)
  else
    redis.call('DEL', ARGV[1] .. 'worker:' .. id)
    redis.call('SREM', ARGV[1] .. 'workers', id)
  end
end
return out
"""


class WorkerRegistry:
    def __init__(self, redis_url: str, ttl_s: float = MEMBERSHIP.lease_ttl_s) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.ttl_s = ttl_s
        self._redis = connect(redis_url, decode_responses=True)
        self._live = self._redis.register_script(_LIVE)

    def publish(self, info: WorkerInfo, load: WorkerLoad) -> None:
        """Renew ``info``'s lease and record its load (registers it if it was not)."""
        fields = {**dataclasses.asdict(info), **dataclasses.asdict(load), "updated_at": time.time()}
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(f"{PREFIX}worker-alive:{info.worker_id}", "1", px=int(self.ttl_s * 1000))
                pipe.sadd(f"{PREFIX}workers", info.worker_id)
                pipe.hset(f"{PREFIX}worker:{info.worker_id}", mapping={k: str(v) for k, v in fields.items()})
                pipe.execute()
        except redis.RedisError as e:
            raise IndexUnavailable(f"cannot publish worker {info.worker_id}: {e}") from e

    def remove(self, worker_id: str) -> None:
        """Deregister a worker (a clean shutdown)."""
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.srem(f"{PREFIX}workers", worker_id)
                pipe.delete(f"{PREFIX}worker:{worker_id}", f"{PREFIX}worker-alive:{worker_id}")
                pipe.execute()
        except redis.RedisError as e:
            raise IndexUnavailable(f"cannot remove worker {worker_id}: {e}") from e

    def live(self) -> list[WorkerState]:
        """Every worker whose lease holds, sorted by id."""
        try:
            rows = self._live(args=[PREFIX])
        except redis.RedisError as e:
            raise IndexUnavailable(f"cannot read workers: {e}") from e
        states = [_state(dict(zip(row[::2], row[1::2]))) for row in rows]
        return sorted(states, key=lambda s: s.info.worker_id)

    def close(self) -> None:
        self._redis.close()


def _parse(cls: type, row: dict[str, str]):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in row:
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            text = row[f.name]
            if kind == "bool":  # published as str(True) / str(False)
                kwargs[f.name] = text == "True"
            else:
                kwargs[f.name] = int(text) if kind == "int" else float(text) if kind == "float" else text
    return cls(**kwargs)


def _state(row: dict[str, str]) -> WorkerState:
    return WorkerState(info=_parse(WorkerInfo, row), load=_parse(WorkerLoad, row))
