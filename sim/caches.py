"""Chunk caches: an LRU of chunk keys with a capacity in chunks, and the store's index.

A key is a trace block's hash id (the id names the whole prefix up to that block, as Tandem's
chain keys do). ``prefix_hits`` walks a key chain and stops at the first miss: longest-prefix
lookup. The ``StoreIndex`` knows which node holds which key, as Redis does for Tandem, and answers
the router's question: per node, how many leading chunks of a chain it holds, and how long a
prefix the nodes hold between them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence


class LruCache:
    """At most ``capacity`` keys; inserting into a full cache evicts the least recently used."""

    def __init__(self, capacity: int, on_evict: Callable[[int], None] | None = None) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._keys: OrderedDict[int, None] = OrderedDict()
        self._on_evict = on_evict
        self.num_evicted = 0

    def __contains__(self, key: int) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def prefix_hits(self, keys: Sequence[int], *, touch: bool = True) -> int:
        """How many leading ``keys`` are cached (touched as used, unless ``touch`` is False)."""
        n = 0
        for key in keys:
            if key not in self._keys:
                break
            n += 1
        if touch:
            for key in keys[:n]:
                self._keys.move_to_end(key)
        return n

    def insert(self, keys: Sequence[int]) -> None:
        """Cache ``keys`` (most recent last), evicting the least recently used beyond capacity."""
        if not self.capacity:
            return
        for key in keys:
            if key in self._keys:
                self._keys.move_to_end(key)
            else:
                self._keys[key] = None
        while len(self._keys) > self.capacity:
            evicted, _ = self._keys.popitem(last=False)
            self.num_evicted += 1
            if self._on_evict is not None:
                self._on_evict(evicted)


class StoreIndex:
    """Store nodes (each an ``LruCache``) and the index of which node holds which key."""

    def __init__(self) -> None:
        self.nodes: dict[str, LruCache] = {}
        self._holders: dict[int, set[str]] = {}

    def add_node(self, node_id: str, capacity_chunks: int) -> None:
        self.nodes[node_id] = LruCache(capacity_chunks, on_evict=lambda key: self._forget(node_id, key))

    def _forget(self, node_id: str, key: int) -> None:
        holders = self._holders.get(key)
        if holders is not None:
            holders.discard(node_id)
            if not holders:
                del self._holders[key]

    def put(self, node_id: str, keys: Sequence[int]) -> None:
        node = self.nodes[node_id]
        node.insert(keys)
        for key in keys:
            if key in node:
                self._holders.setdefault(key, set()).add(node_id)

    def match(self, keys: Sequence[int]) -> tuple[dict[str, int], int]:
        """``(per_node, anywhere)``: leading chunks of ``keys`` on each node that holds the first,
        and the longest prefix the nodes hold between them."""
        per_node: dict[str, int] = {}
        running: set[str] | None = None
        anywhere = 0
        for i, key in enumerate(keys):
            holders = self._holders.get(key)
            if not holders:
                break
            anywhere = i + 1
            running = set(holders) if running is None else running & holders
            for node_id in running:
                per_node[node_id] = i + 1
        return per_node, anywhere

    def fetch(self, keys: Sequence[int]) -> None:
        """A reader got ``keys``: each holder counts it as used."""
        for key in keys:
            for node_id in self._holders.get(key, ()):
                self.nodes[node_id].prefix_hits([key])


def reachable_prefix(per_node: dict[str, int], anywhere: int, own_node: str, remote_fetch: bool) -> int:
    """The leading chunks an instance whose store node is ``own_node`` can reuse from the store:
    what the nodes hold between them, or, without ``remote_fetch``, what its own node holds."""
    return anywhere if remote_fetch else per_node.get(own_node, 0)
