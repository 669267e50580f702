"""One simulation per policy over the same requests, and the effective-capacity sweep."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from router.conductor.profile import CostProfile
from sim.capacity import effective_capacity
from sim.cluster import ClusterShape, SimCluster
from sim.summary import ceilings, intrinsic_misses, summarize
from sim.trace import TraceRequest, rescale


def with_capacities(profile: CostProfile, cache_tokens: int | None, store_tokens: int | None) -> CostProfile:
    """``profile`` with other cache sizes (per instance, per store node), where given."""
    kv = profile.kv
    kv = dataclasses.replace(
        kv,
        cache_tokens_per_instance=kv.cache_tokens_per_instance if cache_tokens is None else cache_tokens,
        store_tokens_per_node=kv.store_tokens_per_node if store_tokens is None else store_tokens,
    )
    return dataclasses.replace(profile, kv=kv)


def total_capacity_chunks(profile: CostProfile, shape: ClusterShape) -> int:
    """Every chunk the cluster can hold at once: instance caches and, with a store, its nodes."""
    kv = profile.kv
    per_instance = kv.cache_tokens_per_instance // kv.chunk_tokens
    caches = (shape.num_instances if shape.colocated else shape.num_prefill) * per_instance
    nodes = (
        0
        if shape.colocated or not shape.store
        else shape.num_instances * (kv.store_tokens_per_node // kv.chunk_tokens)
    )
    return caches + nodes


def simulate(
    profile: CostProfile, shape: ClusterShape, policy: str, requests: Sequence[TraceRequest],
    progress: Callable[[int], None] | None = None, *, max_in_flight: int | None = None,
) -> dict:  # fmt: skip
    """One policy over ``requests``; ``max_in_flight``: a client that keeps at most that many open."""
    cluster = SimCluster(profile, shape, policy, max_in_flight=max_in_flight)
    records = cluster.run(list(requests), progress)
    result = summarize(records, profile.slo.ttft_s, profile.slo.tbt_s)
    result["virtual_s"] = cluster.loop.now
    result["events"] = cluster.loop.num_events
    return result


def capacity(
    profile: CostProfile, shape: ClusterShape, policy: str, requests: Sequence[TraceRequest]
) -> dict:
    def attainment_at(scale: float) -> float:
        return simulate(profile, shape, policy, rescale(list(requests), scale))["slo_attainment"]

    scale, tried = effective_capacity(attainment_at)
    return {"effective_scale": scale, "sweep": [{"scale": s, "attainment": a} for s, a in sorted(tried)]}


def report(profile: CostProfile, shape: ClusterShape, requests: Sequence[TraceRequest]) -> dict:
    """What every policy's result is read against."""
    return {
        "profile": profile.name,
        "shape": dataclasses.asdict(shape),
        "requests": len(requests),
        "ceilings": ceilings(requests, profile.kv.chunk_tokens, total_capacity_chunks(profile, shape)),
        "intrinsic_misses": intrinsic_misses(requests, profile),
        "policies": {},
    }
