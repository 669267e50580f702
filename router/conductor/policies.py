"""Routing policies: pure functions ``(RoutingProblem, CostModel, Slo) -> Route | Rejection``.

- ``cache_aware`` (default): the prefill candidate with the smallest predicted TTFT (queue +
  uncached prefill + fetch), the decode worker with the most headroom; rejects early when the
  best TTFT breaks its SLO while work is queued there (or breaks ``late_factor`` x the SLO even on
  an idle worker), when no decode worker has KV room for the
  request at its final size, or when the decode worker's predicted time between tokens breaks
  its SLO.
- ``prefix``: the candidate with the longest cached prefix (ties: least loaded).
- ``least_loaded``: the candidate with the least queued prefill work.
- ``round_robin``: candidates in turn.
- ``random``: a candidate and a decode worker drawn at random (seeded by the request's turn, so a
  replay is reproducible): the floor FAST'25 measures the others against.

Only ``cache_aware`` rejects on SLOs; the baselines always route (they exist to be compared
against). Every policy rejects with ``no_workers`` / ``no_decode`` when nothing can serve.
A prefill-role worker is a candidate only when some decode worker is live; a colocated worker
decodes on itself.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable

from router.conductor.config import CostModel, Slo
from router.conductor.costs import cached_split, pages_needed, predicted_tbt_s, predicted_ttft_s
from router.conductor.types import PrefillCandidate, Rejection, Route, RoutingProblem
from worker.types import WorkerState

Policy = Callable[[RoutingProblem, CostModel, Slo], "Route | Rejection"]


def _candidates(problem: RoutingProblem) -> tuple[PrefillCandidate, ...] | Rejection:
    usable = tuple(c for c in problem.prefill if c.colocated or problem.decode)
    if usable:
        return usable
    if problem.prefill:
        return Rejection("no_decode", "no decode worker is live; retry when one has registered")
    return Rejection("no_workers", "no prefill or colocated worker is live; retry when one has registered")


def _route(
    problem: RoutingProblem, costs: CostModel, prefill: PrefillCandidate, decode: WorkerState | None
) -> Route:
    decoder = prefill.worker if prefill.colocated else decode
    assert decoder is not None
    return Route(
        prefill=prefill,
        decode=None if prefill.colocated else decode,
        predicted_ttft_s=predicted_ttft_s(costs, prefill, problem.num_prompt_tokens),
        predicted_tbt_s=predicted_tbt_s(costs, decoder.load, _final_tokens(problem)),
    )


def most_headroom(problem: RoutingProblem, costs: CostModel) -> WorkerState | None:
    """The decode worker to use: one with free pages for the whole request if any, then the
    smallest predicted time between tokens, then the most free pages."""

    def key(w: WorkerState) -> tuple:
        tbt = predicted_tbt_s(costs, w.load, _final_tokens(problem))
        return (not has_room(problem, w), tbt, -w.load.free_pages, w.info.worker_id)

    return min(problem.decode, key=key, default=None)


def has_room(problem: RoutingProblem, worker: WorkerState) -> bool:
    """Whether ``worker`` has free pages for the request at its final size (prompt + max_tokens)."""
    return worker.load.free_pages >= pages_needed(worker, _final_tokens(problem))


def _final_tokens(problem: RoutingProblem) -> int:
    return problem.num_prompt_tokens + problem.max_tokens


def _load_key(c: PrefillCandidate) -> tuple:
    load = c.worker.load
    return (load.queued_prefill_tokens, load.num_waiting, load.num_running, c.worker_id)


def round_robin(problem: RoutingProblem, costs: CostModel, slo: Slo) -> Route | Rejection:
    candidates = _candidates(problem)
    if isinstance(candidates, Rejection):
        return candidates
    prefill = candidates[problem.turn % len(candidates)]
    decode = problem.decode[problem.turn % len(problem.decode)] if problem.decode else None
    return _route(problem, costs, prefill, decode)


def least_loaded(problem: RoutingProblem, costs: CostModel, slo: Slo) -> Route | Rejection:
    candidates = _candidates(problem)
    if isinstance(candidates, Rejection):
        return candidates
    decode = min(
        problem.decode,
        key=lambda w: (w.load.num_running + w.load.num_waiting, -w.load.free_pages, w.info.worker_id),
        default=None,
    )
    return _route(problem, costs, min(candidates, key=_load_key), decode)


def prefix(problem: RoutingProblem, costs: CostModel, slo: Slo) -> Route | Rejection:
    candidates = _candidates(problem)
    if isinstance(candidates, Rejection):
        return candidates

    def key(c: PrefillCandidate) -> tuple:
        local, store, _ = cached_split(c, problem.num_prompt_tokens)
        return (-(local + store), -local, *_load_key(c))

    return _route(problem, costs, min(candidates, key=key), most_headroom(problem, costs))


def cache_aware(problem: RoutingProblem, costs: CostModel, slo: Slo) -> Route | Rejection:
    candidates = _candidates(problem)
    if isinstance(candidates, Rejection):
        return candidates
    decode = most_headroom(problem, costs)
    n = problem.num_prompt_tokens
    best = min(candidates, key=lambda c: (predicted_ttft_s(costs, c, n), *_load_key(c)))
    route = _route(problem, costs, best, decode)
    if route.predicted_ttft_s > slo.ttft_s and not _serve_late(best, route, slo):
        return Rejection(
            "ttft_slo",
            f"predicted time to first token {route.predicted_ttft_s:.2f}s exceeds the SLO of "
            f"{slo.ttft_s:.2f}s; the cluster is overloaded, retry later",
            _retry_after_s(route.predicted_ttft_s - slo.ttft_s),
        )
    if decode is not None and not best.colocated and not has_room(problem, decode):
        return Rejection(
            "tbt_slo",
            f"no decode worker has room for this request's {_final_tokens(problem)} tokens of KV now "
            "(it would wait for a slot); the decode pool is overloaded, retry later",
        )
    if route.predicted_tbt_s > slo.tbt_s:
        return Rejection(
            "tbt_slo",
            f"predicted time between tokens {route.predicted_tbt_s * 1000:.0f}ms exceeds the SLO of "
            f"{slo.tbt_s * 1000:.0f}ms; the decode pool is overloaded, retry later",
            _retry_after_s(route.predicted_tbt_s - slo.tbt_s),
        )
    return route


def random(problem: RoutingProblem, costs: CostModel, slo: Slo) -> Route | Rejection:
    candidates = _candidates(problem)
    if isinstance(candidates, Rejection):
        return candidates
    draw = _random.Random(problem.turn)
    decode = draw.choice(problem.decode) if problem.decode else None
    return _route(problem, costs, draw.choice(candidates), decode)


def _serve_late(candidate: PrefillCandidate, route: Route, slo: Slo) -> bool:
    """Serve a request that misses the TTFT SLO anyway: only on an idle worker (nothing queued
    ahead, so it delays no one now) and only while its predicted TTFT is within
    ``slo.late_factor`` x the SLO. Serving such requests keeps their prefix cached for the turns
    after them (in the simulator, rejecting every one of them kept whole conversations of the
    synthetic trace out of the cache: attainment 0.863 instead of 0.910 at x1); serving the
    hopeless ones holds a prefill worker for many seconds for a request that misses anyway."""
    load = candidate.worker.load
    idle = load.queued_prefill_tokens == 0 and load.num_waiting == 0
    return idle and route.predicted_ttft_s <= slo.late_factor * slo.ttft_s


def _retry_after_s(excess_s: float) -> int:
    """A whole number of seconds in [1, 60]: roughly how long the overload takes to drain."""
    return int(min(60, max(1, math.ceil(excess_s))))


POLICIES: dict[str, Policy] = {
    "cache_aware": cache_aware,
    "round_robin": round_robin,
    "least_loaded": least_loaded,
    "prefix": prefix,
    "random": random,
}
POLICY_NAMES = tuple(POLICIES)  # what --policy accepts
DEFAULT_POLICY = "cache_aware"
