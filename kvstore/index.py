"""The cluster-wide index of the store, in Redis: which node holds which key, and who is alive.

Layout, under ``prefix`` (default ``tandem:kv:``)::

    {prefix}nodes         set     ids of registered nodes
    {prefix}node:{id}     hash    address, capacity_bytes, bytes_used, num_chunks, hits, misses, num_evicted
    {prefix}alive:{id}    string  present while the node heartbeats (TTL = heartbeat TTL)
    {prefix}held:{id}     set     keys the node holds (in any tier)
    {prefix}disk:{id}     set     those of them it holds on disk only (reading them costs a disk read)

Contract: a node's ``held`` set is exact whenever it is alive and has published (the node
updates it before it answers each put or delete, and republishes in full when it (re)registers).
Readers only see live nodes; a lapsed node's entries are removed by ``reap``. Multi-key updates
are transactions or Lua scripts, so no reader sees half of one. Every Redis failure is raised as
``IndexUnavailable``. Torch-free: the router reads the index through this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvstore.types import IndexUnavailable, NodeInfo

DEFAULT_PREFIX = "tandem:kv:"
_STAT_FIELDS = (
    "capacity_bytes", "bytes_used", "num_chunks", "hits", "misses", "num_evicted", "num_pinned",
    "disk_capacity_bytes", "disk_bytes_used", "disk_chunks", "disk_hits", "disk_evicted", "num_replicated",
)  # fmt: skip
_BATCH = 4096  # keys per Redis command (Lua's unpack() is limited to a few thousand arguments)

# ARGV: prefix, key...  ->  flat [id, address, [0|1 held per key], [0|1 on disk only per key], ...]
# for every live node.
_LOCATE = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', ARGV[1] .. 'nodes')) do
  if redis.call('EXISTS', ARGV[1] .. 'alive:' .. id) == 1 then
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', ARGV[1] .. 'node:' .. id, 'address') or ''
    out[#out + 1] = redis.call('SMISMEMBER', ARGV[1] .. 'held:' .. id, unpack(ARGV, 2))
    out[#out + 1] = redis.call('SMISMEMBER', ARGV[1] .. 'disk:' .. id, unpack(ARGV, 2))
  end
end
return out
"""
# ARGV: prefix  ->  flat [id, [field, value, ...], ...] for every live node.
_LIVE_NODES = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', ARGV[1] .. 'nodes')) do
  if redis.call('EXISTS', ARGV[1] .. 'alive:' .. id) == 1 then
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGETALL', ARGV[1] .. 'node:' .. id)
  end
end
return out
"""
# ARGV: prefix  ->  ids of lapsed nodes, whose entries are deleted (atomically with the check).
_REAP = """
local reaped = {}
for _, id in ipairs(redis.call('SMEMBERS', ARGV[1] .. 'nodes')) do
  if redis.call('EXISTS', ARGV[1] .. 'alive:' .. id) == 0 then
    redis.call('DEL', ARGV[1] .. 'held:' .. id, ARGV[1] .. 'disk:' .. id, ARGV[1] .. 'node:' .. id)
    redis.call('SREM', ARGV[1] .. 'nodes', id)
    reaped[#reaped + 1] = id
  end
end
return reaped
"""


@dataclass(frozen=True)
class Holding:
    """A live node and, for each key asked about, whether it holds it and whether only on disk."""

    node_id: str
    address: str
    held: tuple[bool, ...]
    on_disk: tuple[bool, ...] = ()

    def in_memory(self, i: int) -> bool:
        return self.held[i] and not (self.on_disk and self.on_disk[i])


@dataclass(frozen=True)
class IndexDelta:
    """What changed on a node: keys it now holds (in memory unless also in ``on_disk``) and keys
    it no longer holds."""

    added: Sequence[bytes]
    removed: Sequence[bytes]
    on_disk: Sequence[bytes] = ()


def _batched(command, key: str, members: list[bytes]) -> None:
    """``command(key, *members)`` in slices Redis (and Lua's unpack) accept; nothing for no members."""
    for start in range(0, len(members), _BATCH):
        command(key, *members[start : start + _BATCH])


@contextlib.contextmanager
def _redis_errors(url: str) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as e:
        raise IndexUnavailable(f"store index at {url} unavailable: {e}") from e


def redacted(url: str) -> str:
    """A Redis URL fit for logs and errors: its password, if any, masked."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':')[0]}:***@{host}" if at else url


def connect(redis_url: str, timeout_s: float = 2.0, *, decode_responses: bool = False) -> redis.Redis:
    """A Redis client as every member of the cluster uses one: bounded waits, and one retry that
    re-dials a connection a Redis restart broke."""
    return redis.Redis.from_url(
        redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
        decode_responses=decode_responses,
    )


class StoreIndex:
    """Reads and writes of the index. Thread-safe (redis-py's connection pool)."""

    def __init__(self, redis_url: str, *, prefix: str = DEFAULT_PREFIX, timeout_s: float = 2.0) -> None:
        self.url = redacted(redis_url)  # for messages: the password stays out of logs
        self.prefix = prefix
        self._redis = connect(redis_url, timeout_s)
        self._locate = self._redis.register_script(_LOCATE)
        self._live_nodes = self._redis.register_script(_LIVE_NODES)
        self._reap = self._redis.register_script(_REAP)

    def _key(self, kind: str, node_id: str) -> str:
        return f"{self.prefix}{kind}:{node_id}"

    # ---- node side -------------------------------------------------------------------------

    def register(
        self,
        node_id: str,
        address: str,
        ttl_s: float,
        keys: Iterable[bytes],
        stats: dict[str, int],
        *,
        on_disk: Iterable[bytes] = (),
    ) -> None:
        """(Re)publish a node in full: alive, described, and holding exactly ``keys``, of which
        ``on_disk`` on disk only."""
        held, disk = self._key("held", node_id), self._key("disk", node_id)
        with _redis_errors(self.url), self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key("alive", node_id), b"1", px=int(ttl_s * 1000))
            pipe.sadd(f"{self.prefix}nodes", node_id)
            pipe.hset(self._key("node", node_id), mapping={"address": address, **stats})
            pipe.delete(held, disk)
            _batched(pipe.sadd, held, list(keys))
            _batched(pipe.sadd, disk, list(on_disk))
            pipe.execute()

    def heartbeat(self, node_id: str, ttl_s: float, stats: dict[str, int]) -> bool:
        """Extend a node's lease and publish its counters. False if the lease had lapsed (or Redis
        lost it): the node must ``register`` again, since its entries may have been reaped."""
        with _redis_errors(self.url), self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._key("alive", node_id), b"1", px=int(ttl_s * 1000), xx=True)
            pipe.hset(self._key("node", node_id), mapping=stats)
            renewed, _ = pipe.execute()
        return bool(renewed)

    def publish(
        self,
        node_id: str,
        added: list[bytes],
        removed: list[bytes],
        stats: dict[str, int],
        *,
        on_disk: Sequence[bytes] = (),
    ) -> None:
        """Record keys a node holds (``added``: held, in memory unless also in ``on_disk``) and no
        longer holds, and its new counters, in one transaction."""
        self.publish_batch(node_id, [IndexDelta(added, removed, tuple(on_disk))], stats)

    def publish_batch(self, node_id: str, deltas: Sequence[IndexDelta], stats: dict[str, int]) -> None:
        """``publish`` several deltas, applied in order, and the counters after the last, in one
        transaction (one round trip however long the backlog)."""
        held, disk = self._key("held", node_id), self._key("disk", node_id)
        with _redis_errors(self.url), self._redis.pipeline(transaction=True) as pipe:
            for delta in deltas:
                only_disk = set(delta.on_disk)
                _batched(pipe.srem, held, list(delta.removed))
                _batched(pipe.sadd, held, list(delta.added))
                _batched(pipe.srem, disk, [*delta.removed, *(k for k in delta.added if k not in only_disk)])
                _batched(pipe.sadd, disk, list(delta.on_disk))
            pipe.hset(self._key("node", node_id), mapping=stats)
            pipe.execute()

    def deregister(self, node_id: str) -> None:
        """Remove a node and everything it published (a clean shutdown)."""
        with _redis_errors(self.url), self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*(self._key(kind, node_id) for kind in ("alive", "held", "disk", "node")))
            pipe.srem(f"{self.prefix}nodes", node_id)
            pipe.execute()

    def reap(self) -> list[str]:
        """Delete the entries of every node whose lease lapsed; returns their ids."""
        with _redis_errors(self.url):
            return [i.decode() for i in self._reap(args=[self.prefix])]

    # ---- reader side -------------------------------------------------------------------------

    def locate(self, keys: list[bytes]) -> list[Holding]:
        """For every live node, which of ``keys`` it holds. One round trip per 4096 keys."""
        if not keys:
            return []
        holdings: dict[str, tuple[str, list[bool], list[bool]]] = {}
        for start in range(0, len(keys), _BATCH):
            for node_id, address, held, on_disk in self._locate_batch(keys[start : start + _BATCH]):
                entry = holdings.setdefault(node_id, (address, [False] * start, [False] * start))
                entry[1].extend(held)
                entry[2].extend(on_disk)
        # A node that registered between two batches is missing the earlier ones: pad with misses.
        pad = [False] * len(keys)
        return [
            Holding(node_id, address, tuple((held + pad)[: len(keys)]), tuple((on_disk + pad)[: len(keys)]))
            for node_id, (address, held, on_disk) in sorted(holdings.items())
        ]

    def _locate_batch(self, keys: list[bytes]) -> Iterator[tuple[str, str, list[bool], list[bool]]]:
        with _redis_errors(self.url):
            flat = self._locate(args=[self.prefix, *keys])
        for i in range(0, len(flat), 4):
            yield (
                flat[i].decode(),
                flat[i + 1].decode(),
                [bool(x) for x in flat[i + 2]],
                [bool(x) for x in flat[i + 3]],
            )

    def nodes(self) -> list[NodeInfo]:
        """Every live node, sorted by id."""
        with _redis_errors(self.url):
            flat = self._live_nodes(args=[self.prefix])
        infos = []
        for i in range(0, len(flat), 2):
            fields = dict(zip(flat[i + 1][::2], flat[i + 1][1::2]))
            infos.append(
                NodeInfo(
                    node_id=flat[i].decode(),
                    address=fields.get(b"address", b"").decode(),
                    **{name: int(fields.get(name.encode(), 0)) for name in _STAT_FIELDS},
                )
            )
        return sorted(infos, key=lambda n: n.node_id)

    def held_keys(self, node_id: str) -> set[bytes]:
        """Every key the index says ``node_id`` holds (for checks and tools, not the hot path)."""
        with _redis_errors(self.url):
            return set(self._redis.smembers(self._key("held", node_id)))

    def close(self) -> None:
        self._redis.close()
