"""A simulated cluster and its router, in virtual time: the conductor decides every placement.

For each arrival the router does what Tandem's does: it asks the store's index for the prompt's
cached prefix on every node, builds each prefill candidate with the conductor's own
``prefill_candidate``, sees every instance's load as that instance last reported it (every
heartbeat, so with the real report lag) adjusted by the prefill work it routed since
(``PendingPrefills``), and calls the policy by name from ``POLICIES``: a policy added there is
simulated as it is. A ``Rejection`` is counted and the request dropped.

``max_in_flight`` models a client that keeps at most that many requests open, as ``bench.serve``'s
does: a request due while the client is full waits at the client, and its latencies count from
when it is sent (so a simulated run and a replay against a real cluster measure the same thing).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from router.conductor import POLICIES, PendingDecodes, PendingPrefills, Rejection, Route, RoutingProblem
from router.conductor.costs import cached_split, pages_needed
from router.conductor.prefix import prefill_candidate
from router.conductor.profile import CostProfile
from sim.caches import StoreIndex, reachable_prefix
from sim.decode import ColocatedInstance, DecodeInstance, DecodeSeq
from sim.events import EventLoop
from sim.prefill import PrefillInstance, PrefillJob
from sim.records import RequestRecord
from sim.reports import LoadReporter
from sim.trace import TraceRequest
from worker.types import MEMBERSHIP, WorkerInfo


@dataclass(frozen=True)
class ClusterShape:
    num_prefill: int = 8
    num_decode: int = 8
    colocated: bool = False  # num_prefill + num_decode colocated instances instead
    store: bool = True  # a store node per instance (prefill fetches from any of them)
    remote_fetch: bool = True  # False: each prefill instance reuses its own node's chunks only

    @property
    def num_instances(self) -> int:
        return self.num_prefill + self.num_decode


class SimCluster:
    def __init__(
        self, profile: CostProfile, shape: ClusterShape, policy: str, *,
        lag_s: float = MEMBERSHIP.heartbeat_s, max_in_flight: int | None = None,
    ) -> None:  # fmt: skip
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.profile, self.shape, self.policy = profile, shape, policy
        self.costs, self.slo = profile.cost_model(), profile.slo_targets()
        self.loop = EventLoop()
        self.store = StoreIndex() if shape.store and not shape.colocated else None
        self.prefill: dict[str, PrefillInstance] = {}
        self.decode: dict[str, DecodeInstance] = {}
        self.infos: dict[str, WorkerInfo] = {}
        self._build()
        self.reporter = LoadReporter(self, lag_s)
        self.pending = PendingPrefills()
        self.decoding = PendingDecodes()
        self.records: dict[int, RequestRecord] = {}
        self._turn = 0
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._held: deque[TraceRequest] = deque()  # due, waiting for the client to have room

    def _build(self) -> None:
        p, shape = self.profile, self.shape
        node_chunks = p.kv.store_tokens_per_node // p.kv.chunk_tokens
        if shape.colocated:
            for i in range(shape.num_instances):
                inst = ColocatedInstance(f"colocated-{i}", p, self.loop, self._decoded, self._prefilled)
                self.prefill[inst.instance_id] = inst.prefill
                self.decode[inst.instance_id] = inst
                self._info(inst.instance_id, "colocated", "")
            return
        for i in range(shape.num_prefill):
            node = f"store-{i}" if self.store is not None else ""
            if self.store is not None:
                self.store.add_node(node, node_chunks)
            self.prefill[f"prefill-{i}"] = PrefillInstance(
                f"prefill-{i}",
                p,
                self.loop,
                self.store,
                node,
                self._prefilled,
                remote_fetch=shape.remote_fetch,
            )
            self._info(f"prefill-{i}", "prefill", node)
        for i in range(shape.num_decode):
            if self.store is not None:  # decode nodes hold what decode writes back; counted in capacity
                self.store.add_node(f"store-decode-{i}", node_chunks)
            self.decode[f"decode-{i}"] = DecodeInstance(f"decode-{i}", p, self.loop, self._decoded)
            self._info(f"decode-{i}", "decode", f"store-decode-{i}" if self.store is not None else "")

    def _info(self, worker_id: str, role: str, store_node: str) -> None:
        self.infos[worker_id] = WorkerInfo(
            worker_id=worker_id, role=role, address=f"sim://{worker_id}", model="sim", fingerprint="00",
            page_size=16, chunk_tokens=self.profile.kv.chunk_tokens, max_model_len=1 << 30,
            store_node_id=store_node, kv_bytes_per_token=self.profile.kv.bytes_per_token,
        )  # fmt: skip

    # ---- the router ----------------------------------------------------------------------------

    def run(self, requests: list[TraceRequest], progress=None) -> list[RequestRecord]:
        self._progress = progress
        for request in requests:
            self.loop.at(request.arrival_s, lambda r=request: self._due(r))
        self.loop.run()
        return [self.records[r.index] for r in requests]

    def _due(self, request: TraceRequest) -> None:
        if self.max_in_flight is not None and self._in_flight >= self.max_in_flight:
            self._held.append(request)
            return
        self._arrive(request)

    def _arrive(self, request: TraceRequest) -> None:
        if self._progress is not None:
            self._progress(1)
        self._in_flight += 1
        record = self.records[request.index] = RequestRecord.of(request)
        decision = self._route(request)
        if isinstance(decision, Rejection):
            record.rejected = decision.reason
            self._closed()
            return
        prefill_id = decision.prefill.worker_id
        decode_id = None if decision.decode is None else decision.decode.info.worker_id
        record.routed(prefill_id, decode_id or prefill_id, decision)
        self.pending.add(
            str(request.index), prefill_id, cached_split(decision.prefill, request.input_tokens)[2]
        )
        if decision.decode is not None:
            pages = pages_needed(decision.decode, request.input_tokens + request.output_tokens)
            self.decoding.add(str(request.index), decode_id, pages)
        self.prefill[prefill_id].submit(PrefillJob(request, decode_id))

    def _route(self, request: TraceRequest) -> Route | Rejection:
        per_node, anywhere = self.store.match(request.keys) if self.store is not None else ({}, 0)
        states = self.reporter.states(self.loop.now)
        candidates = tuple(
            self.pending.adjust(
                prefill_candidate(states[wid], per_node, self._reachable(wid, per_node, anywhere))
            )
            for wid in self.prefill
        )
        decoders = tuple(
            self.decoding.adjust(states[wid]) for wid in self.decode if self.infos[wid].role == "decode"
        )
        problem = RoutingProblem(
            request.input_tokens, request.output_tokens, candidates, decoders, self._turn
        )
        self._turn += 1
        return POLICIES[self.policy](problem, self.costs, self.slo)

    def _reachable(self, worker_id: str, per_node: dict[str, int], anywhere: int) -> int:
        own = self.infos[worker_id].store_node_id
        return reachable_prefix(per_node, anywhere, own, self.shape.remote_fetch)

    # ---- the instances' callbacks ----------------------------------------------------------------

    def _prefilled(self, job: PrefillJob, now: float) -> None:
        request = job.request
        self.pending.done(str(request.index))
        record = self.records[request.index]
        record.prefilled(now, job.cached_local, job.cached_store)
        if request.output_tokens <= 1:
            self._finished(request.index, now, 0.0)
            return
        seq = DecodeSeq(request.index, request.input_tokens + 1, request.output_tokens - 1)
        if job.decode_id is None:  # colocated: decode where it was prefilled
            self.decode[record.prefill_id].submit(seq)
            return
        target = self.decode[job.decode_id]
        self.loop.after(self.profile.handoff_s(request.input_tokens), lambda: target.submit(seq))

    def _decoded(self, seq: DecodeSeq, now: float, mean_step_s: float) -> None:
        self._finished(seq.request_id, now, mean_step_s)

    def _finished(self, index: int, now: float, mean_step_s: float) -> None:
        self.decoding.done(str(index))
        self.records[index].finish(now, mean_step_s)
        self._closed()

    def _closed(self) -> None:
        """A request is answered: the client sends the next one it holds, now."""
        self._in_flight -= 1
        if self._held:
            self._arrive(replace(self._held.popleft(), arrival_s=self.loop.now))
