"""The conductor: where a request goes, or why it is rejected now. Pure: it imports only
``worker.types`` and the standard library (no torch, redis, fastapi or zmq), so the router, the
simulator and tests drive the same code.

- ``types``: what it decides over (``RoutingProblem`` of ``PrefillCandidate``s and decode workers)
  and what it decides (``Route`` or ``Rejection``).
- ``config``: ``CostModel`` (latency coefficients) and ``Slo`` (latency targets).
- ``costs``: predicted TTFT and time between tokens per worker.
- ``policies``: ``POLICIES`` by name (``cache_aware`` and the baselines).
- ``pending``: prefill work routed but not yet in the workers' load reports.
"""

from __future__ import annotations

from router.conductor.config import CostModel, Slo
from router.conductor.pending import PendingDecodes, PendingPrefills
from router.conductor.policies import DEFAULT_POLICY, POLICIES, POLICY_NAMES, Policy
from router.conductor.types import PrefillCandidate, Rejection, Route, RoutingProblem

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "POLICY_NAMES",
    "CostModel",
    "PendingDecodes",
    "PendingPrefills",
    "Policy",
    "PrefillCandidate",
    "Rejection",
    "Route",
    "RoutingProblem",
    "Slo",
]
