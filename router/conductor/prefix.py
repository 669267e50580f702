"""A prompt's cached prefix on one prefill candidate, as the store's index answers it.

The index tells, per store node, how many leading chunks of the prompt's key chain the node holds,
and how long a prefix the live nodes hold between them (``anywhere``). The leading chunks on the
candidate's own store node are local (reused in place); the rest of ``anywhere`` is what it would
fetch. A worker with no store node (colocated) uses no store: the index says nothing about its own
pages. The router and the simulator both build candidates here.
"""

from __future__ import annotations

from collections.abc import Mapping

from router.conductor.types import PrefillCandidate
from worker.types import WorkerState


def prefill_candidate(
    worker: WorkerState, per_node: Mapping[str, int], anywhere: int, on_disk: int = 0
) -> PrefillCandidate:
    """``worker`` with the prefix the index reports: ``per_node[node]`` leading chunks on each node,
    ``anywhere`` leading chunks on the live nodes together, ``on_disk`` of which no node holds in
    memory (a store node reads them from its disk tier first)."""
    own = worker.info.store_node_id
    if not own:
        return PrefillCandidate(worker)
    local = per_node.get(own, 0)
    chunk = worker.info.chunk_tokens
    cached = max(anywhere, local)
    return PrefillCandidate(worker, local * chunk, (cached - local) * chunk, min(on_disk, cached) * chunk)
