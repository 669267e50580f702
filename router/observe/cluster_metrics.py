"""What the cluster reports about itself, exported on the router's ``/metrics`` at scrape time:
each worker's load and its own counters (prompt tokens it prefilled, tokens it reused, KV transfer
bytes and seconds), and each store node's usage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvstore.types import NodeInfo
from worker.types import ROLES, TRANSFER_KINDS, WorkerState

_LABELS = ["instance", "role"]
# (family, help, its value in a WorkerLoad): one series per worker in each
_WORKER_GAUGES = (
    ("tandem_worker_running", "Sequences in the worker's running batch", lambda load: load.num_running),
    ("tandem_worker_waiting", "Requests queued on the worker (not yet running)", lambda load: load.num_waiting),
    ("tandem_worker_queued_prefill_tokens", "Prompt tokens waiting to be prefilled",
     lambda load: load.queued_prefill_tokens),
    ("tandem_worker_kv_pages_free", "Free KV cache pages on the worker", lambda load: load.free_pages),
    ("tandem_worker_kv_pages_total", "KV cache pages on the worker", lambda load: load.total_pages),
    ("tandem_worker_step_seconds", "Recent mean engine step time", lambda load: load.step_ms / 1000),
    ("tandem_worker_step_fixed_seconds", "Fitted step time: the fixed part (conductor input)",
     lambda load: load.step_fixed_s),
    ("tandem_worker_step_seconds_per_token", "Fitted step time: the part per token",
     lambda load: load.step_per_token_s),
)  # fmt: skip


class ClusterCollector(Collector):
    """Per-worker and per-store-node families, built at scrape time from the router's latest view.

    Counters here are the workers' and nodes' own (they restart from zero with the process; PromQL's
    ``rate`` handles resets). A worker or node that is gone has no series.
    """

    def __init__(
        self, workers: Callable[[], Sequence[WorkerState]], nodes: Callable[[], Sequence[NodeInfo]]
    ) -> None:
        self._workers = workers
        self._nodes = nodes

    def describe(self) -> list[Metric]:
        return []  # families depend on the cluster; don't collect at registration

    def collect(self) -> Iterator[Metric]:
        workers = self._workers()
        yield _worker_count(workers)
        yield from _worker_gauges(workers)
        yield from _worker_counters(workers)
        yield from _store_families(self._nodes())


def _worker_count(workers: Sequence[WorkerState]) -> Metric:
    count = GaugeMetricFamily("tandem_workers", "Live workers by role", labels=["role"])
    for role in ROLES:
        count.add_metric([role], sum(w.info.role == role for w in workers))
    return count


def _worker_gauges(workers: Sequence[WorkerState]) -> Iterator[Metric]:
    for name, doc, value in _WORKER_GAUGES:
        family = GaugeMetricFamily(name, doc, labels=_LABELS)
        for w in workers:
            family.add_metric([w.info.worker_id, w.info.role], value(w.load))
        yield family


def _worker_counters(workers: Sequence[WorkerState]) -> Iterator[Metric]:
    prompt = CounterMetricFamily(
        "tandem_worker_prompt_tokens", "Prompt tokens the worker prefilled, as it counts them", labels=_LABELS
    )
    cached = CounterMetricFamily(
        "tandem_worker_cached_tokens", "Prompt tokens the worker reused, by tier, as it counts them",
        labels=[*_LABELS, "tier"],
    )  # fmt: skip
    moved = CounterMetricFamily(
        "tandem_transfer_bytes", "KV bytes moved by the worker: kv_send / kv_recv (prefill to decode "
        "hand-off), store_put / store_fetch (store nodes)", labels=["instance", "kind"],
    )  # fmt: skip
    spent = CounterMetricFamily(
        "tandem_transfer_seconds", "The worker's time in those transfers (packing, round trips, unpacking)",
        labels=["instance", "kind"],
    )  # fmt: skip
    for w in workers:
        key, load = [w.info.worker_id, w.info.role], w.load
        prompt.add_metric(key, load.prompt_tokens)
        cached.add_metric([*key, "local"], load.cached_local_tokens)
        cached.add_metric([*key, "store"], load.cached_store_tokens)
        for kind in TRANSFER_KINDS:
            moved.add_metric([w.info.worker_id, kind], getattr(load, f"{kind}_bytes"))
            spent.add_metric([w.info.worker_id, kind], getattr(load, f"{kind}_s"))
    yield from (prompt, cached, moved, spent)


def _store_families(nodes: Sequence[NodeInfo]) -> Iterator[Metric]:
    gauges = {
        "bytes_used": GaugeMetricFamily("tandem_store_bytes_used", "Bytes of the node's arena in use", labels=["node"]),
        "capacity_bytes": GaugeMetricFamily("tandem_store_capacity_bytes", "The node's arena size", labels=["node"]),
        "num_chunks": GaugeMetricFamily("tandem_store_chunks", "KV chunks the node holds", labels=["node"]),
        "num_pinned": GaugeMetricFamily("tandem_store_pinned_chunks", "Chunks pinned while readers receive them",
                                        labels=["node"]),
        "disk_bytes_used": GaugeMetricFamily("tandem_store_disk_bytes_used", "Bytes of the node's disk tier in use",
                                             labels=["node"]),
        "disk_capacity_bytes": GaugeMetricFamily("tandem_store_disk_capacity_bytes",
                                                 "The node's disk tier size (0: none)", labels=["node"]),
        "disk_chunks": GaugeMetricFamily("tandem_store_disk_chunks", "KV chunks on the node's disk tier",
                                         labels=["node"]),
    }  # fmt: skip
    counters = {
        "num_evicted": CounterMetricFamily("tandem_store_evictions", "Chunks evicted (LRU)", labels=["node"]),
        "hits": CounterMetricFamily("tandem_store_hits", "Keys asked of the node that it held", labels=["node"]),
        "misses": CounterMetricFamily("tandem_store_misses", "Keys asked of the node it did not hold", labels=["node"]),
        "disk_hits": CounterMetricFamily("tandem_store_disk_hits", "Chunks read back from the disk tier (also in hits)",
                                         labels=["node"]),
        "disk_evicted": CounterMetricFamily("tandem_store_disk_evictions", "Chunk files deleted to stay under the "
                                            "disk capacity", labels=["node"]),
        "num_replicated": CounterMetricFamily("tandem_store_replicated", "Hot chunks the node copied to another node",
                                              labels=["node"]),
    }  # fmt: skip
    for node in nodes:
        for field, family in {**gauges, **counters}.items():
            family.add_metric([node.node_id], getattr(node, field))
    yield from gauges.values()
    yield from counters.values()
