"""A discrete-event simulator of a Tandem cluster in virtual time, driving the router's real
conductor (``router.conductor``) over request traces with fitted cost profiles.

- ``trace``: Mooncake JSONL traces and synthetic workloads, as ``TraceRequest``s.
- ``events``: the event loop (virtual time).
- ``caches``: LRU chunk caches and the store's index (which node holds which chunk).
- ``prefill``, ``decode``: the instances, stepping in virtual time by the profile's step costs.
- ``cluster``: the cluster and its router: the conductor's policies decide every placement.
- ``report``: per-policy results, the cache ceilings, effective capacity; ``plots``: PNGs.
- ``cli``: ``tandem simulate``.

Nothing in the serving path imports this package.
"""
