"""``RouterMetrics`` on its own: hit-rate gauges from the per-request counts, and the cluster's
families rendered from worker and store-node reports."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvstore.types import NodeInfo
from router.observe.metrics import PrefillReport, RouterMetrics
from worker.types import WorkerInfo, WorkerLoad, WorkerState


def samples(metrics: RouterMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def worker(worker_id: str, role: str, **load) -> WorkerState:
    info = WorkerInfo(worker_id, role, "tcp://127.0.0.1:1", "m", "00", 16, 64, 4096)
    return WorkerState(info, WorkerLoad(**load))


def test_hit_rates_are_the_ratios_of_the_counts():
    m = RouterMetrics()
    assert samples(m)[("tandem_kv_hit_rate", ())] == 0.0
    m.prefilled(PrefillReport("p0", 100, 64, 0, 64, 0))
    m.prefilled(PrefillReport("p1", 200, 0, 128, 0, 64))
    s = samples(m)
    assert s[("tandem_prompt_tokens_total", ())] == 300
    assert s[("tandem_cached_tokens_total", (("tier", "local"),))] == 64
    assert s[("tandem_cached_tokens_total", (("tier", "store"),))] == 128
    assert s[("tandem_predicted_cached_tokens_total", (("tier", "store"),))] == 64
    assert s[("tandem_kv_hit_rate", ())] == pytest.approx(192 / 300)
    assert s[("tandem_kv_hit_rate_by_tier", (("tier", "store"),))] == pytest.approx(128 / 300)
    assert s[("tandem_instance_kv_hit_rate", (("instance", "p0"),))] == pytest.approx(0.64)
    assert s[("tandem_instance_kv_hit_rate", (("instance", "p1"),))] == pytest.approx(0.64)
    assert s[("tandem_instance_cached_tokens_total", (("instance", "p1"), ("tier", "store")))] == 128


def test_cluster_families_come_from_the_latest_reports():
    m = RouterMetrics()
    m.set_slo(2.0, 0.1)
    workers = [
        worker("p0", "prefill", num_waiting=3, prompt_tokens=500, cached_store_tokens=64, kv_send_bytes=4096),
        worker(
            "d0", "decode", num_running=7, free_pages=10, total_pages=40, kv_recv_bytes=4096, step_ms=25.0
        ),
    ]
    nodes = [NodeInfo("s0", "tcp://127.0.0.1:2", 1 << 20, 4096, 1, 5, 2, 9, num_pinned=3)]
    view = {"workers": workers, "nodes": nodes}
    m.watch(lambda: view["workers"], lambda: view["nodes"])
    s = samples(m)
    assert s[("tandem_slo_seconds", (("kind", "tbt"),))] == 0.1
    assert s[("tandem_workers", (("role", "prefill"),))] == 1
    assert s[("tandem_worker_waiting", (("instance", "p0"), ("role", "prefill")))] == 3
    assert s[("tandem_worker_running", (("instance", "d0"), ("role", "decode")))] == 7
    assert s[("tandem_worker_kv_pages_free", (("instance", "d0"), ("role", "decode")))] == 10
    assert s[("tandem_worker_step_seconds", (("instance", "d0"), ("role", "decode")))] == 0.025
    assert s[("tandem_worker_prompt_tokens_total", (("instance", "p0"), ("role", "prefill")))] == 500
    key = ("tandem_worker_cached_tokens_total", (("instance", "p0"), ("role", "prefill"), ("tier", "store")))
    assert s[key] == 64
    assert s[("tandem_transfer_bytes_total", (("instance", "p0"), ("kind", "kv_send")))] == 4096
    assert s[("tandem_transfer_bytes_total", (("instance", "d0"), ("kind", "kv_recv")))] == 4096
    assert s[("tandem_store_capacity_bytes", (("node", "s0"),))] == 1 << 20
    assert s[("tandem_store_bytes_used", (("node", "s0"),))] == 4096
    assert s[("tandem_store_evictions_total", (("node", "s0"),))] == 9
    assert s[("tandem_store_hits_total", (("node", "s0"),))] == 5
    assert s[("tandem_store_pinned_chunks", (("node", "s0"),))] == 3

    view["workers"], view["nodes"] = workers[:1], []  # d0 and s0 are gone: so are their series
    s = samples(m)
    assert not any(labels and ("instance", "d0") in labels for _, labels in s)
    assert not any(name.startswith("tandem_store_") for name, _ in s)
