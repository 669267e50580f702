"""Latency predictions the conductor decides by: pure functions of a worker's load and a ``CostModel``.

TTFT on a prefill candidate = the prefill work queued ahead of the request + prefilling the
tokens nobody has cached + getting the tokens another node has cached (fetched, or recomputed
when that is cheaper: the worker makes the same choice). A request always computes at least its
last prompt token (the first output token needs its logits), so cached counts are capped below
the prompt length. Prefill costs are the worker's own fitted step line once it has reported one
(``WorkerLoad.step_*``, fitted by ``engine.step_cost``), the configured ones before; a fetch moves
the KV bytes per token the worker publishes (``WorkerInfo.kv_bytes_per_token``) unless the
``CostModel`` overrides them. Cached tokens a store node holds on disk only add the disk read.
"""

from __future__ import annotations

import dataclasses
import math

from router.conductor.config import CostModel
from router.conductor.types import PrefillCandidate
from worker.types import WorkerLoad, WorkerState


def prefill_time_s(costs: CostModel, num_tokens: int, context_tokens: int = 0) -> float:
    """One prefill of ``num_tokens`` uncached tokens after ``context_tokens`` cached ones (each new
    token attends to the context and to the new tokens before it)."""
    attention = costs.prefill_per_token_context_s * num_tokens * (context_tokens + num_tokens / 2)
    return costs.prefill_fixed_s + costs.prefill_per_token_s * num_tokens + attention


def fetch_time_s(costs: CostModel, num_tokens: int) -> float:
    """Fetching ``num_tokens`` tokens of KV from another store node (0 for none), at
    ``costs.kv_bytes_per_token`` (see ``worker_costs`` for a given worker's)."""
    if num_tokens <= 0:
        return 0.0
    return costs.fetch_fixed_s + costs.fetch_per_byte_s * num_tokens * costs.kv_bytes_per_token


def disk_read_time_s(costs: CostModel, num_tokens: int) -> float:
    """A store node reading ``num_tokens`` tokens of KV back from its disk tier (0 for none)."""
    if num_tokens <= 0:
        return 0.0
    return costs.disk_fixed_s + costs.disk_per_byte_s * num_tokens * costs.kv_bytes_per_token


def queue_wait_s(costs: CostModel, load: WorkerLoad) -> float:
    """Time until a new request starts prefilling: the queued prefill tokens ahead of it."""
    return costs.prefill_per_token_s * load.queued_prefill_tokens + costs.prefill_fixed_s * load.num_waiting


def cached_split(candidate: PrefillCandidate, num_prompt_tokens: int) -> tuple[int, int, int]:
    """``(local, store, uncached)`` prompt tokens on this candidate; they sum to the prompt length."""
    limit = max(0, num_prompt_tokens - 1)
    local = min(candidate.cached_local_tokens, limit)
    store = min(candidate.cached_store_tokens, limit - local)
    return local, store, num_prompt_tokens - local - store


# Busy steps a worker must have reported before its own fit replaces the configured prefill costs.
MIN_FITTED_STEPS = 8


def worker_costs(costs: CostModel, worker: WorkerState) -> CostModel:
    """``costs`` as they apply to ``worker``: the prefill line it measured, once it has measured
    enough steps, and the KV bytes per token it publishes, unless ``costs`` sets them (> 0)."""
    changes: dict[str, float] = {}
    if worker.load.step_samples >= MIN_FITTED_STEPS:
        changes.update(
            prefill_fixed_s=worker.load.step_fixed_s, prefill_per_token_s=worker.load.step_per_token_s
        )
    if not costs.kv_bytes_per_token and worker.info.kv_bytes_per_token:
        changes["kv_bytes_per_token"] = worker.info.kv_bytes_per_token
    return dataclasses.replace(costs, **changes) if changes else costs


def predicted_ttft_s(costs: CostModel, candidate: PrefillCandidate, num_prompt_tokens: int) -> float:
    costs = worker_costs(costs, candidate.worker)
    local, store, uncached = cached_split(candidate, num_prompt_tokens)
    # what sits on disk is read before it is sent: on the own node too (the worker fetches it from there)
    disk = disk_read_time_s(costs, min(candidate.cached_disk_tokens, local + store))
    remote = min(fetch_time_s(costs, store), costs.prefill_per_token_s * store)
    return (
        queue_wait_s(costs, candidate.worker.load)
        + prefill_time_s(costs, uncached, local + store)
        + remote
        + disk
    )


def predicted_tbt_s(costs: CostModel, load: WorkerLoad, context_tokens: int = 0) -> float:
    """Time between tokens on a decode worker once this request joins its batch: its current step
    time (or the base step when idle or unreported) plus the cost of the sequences it adds and of
    the ``context_tokens`` this request will hold there."""
    step_s = max(load.step_ms / 1000.0, costs.decode_base_s)
    return (
        step_s
        + costs.decode_per_seq_s * (1 + load.num_waiting)
        + costs.decode_per_context_token_s * context_tokens
    )


def pages_needed(worker: WorkerState, num_tokens: int) -> int:
    return math.ceil(num_tokens / max(1, worker.info.page_size))
