"""Admitting one OpenAI request: parse and validate its body, tokenize it (chat template
included), fix its sampling against the context left, and ask the conductor where it goes.

The conductor sees the cluster view less the workers that failed a request recently
(``Suspects``) and with the prefill work the router sent that the workers' reports may not show
yet (``PendingPrefills``). Every refusal is an ``ApiError``: 400 / 404 for the request itself,
429 when the conductor predicts an SLO miss, 503 when nothing can serve it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from router.conductor import POLICIES, PendingDecodes, PendingPrefills, Rejection, Route, RoutingProblem
from router.config import RouterConfig
from router.dispatch.cluster import ClusterSnapshot, ClusterView
from router.dispatch.failures import Suspects
from router.errors import ApiError
from router.protocol import ParsedRequest, parse_chat, parse_completion, sampling_fields
from router.tokenizer import TextTokenizer
from router.validation import parse_body
from transfer.messages import Sampling
from worker.types import ROLES

SLO_REASONS = ("ttft_slo", "tbt_slo")  # rejections that are 429 (the others: 503)


@dataclass(frozen=True)
class Admitted:
    """A request that may be served: what it asks, its prompt's token ids, and its first route."""

    parsed: ParsedRequest
    token_ids: list[int]
    sampling: Sampling
    route: Route


class Admission:
    def __init__(
        self,
        config: RouterConfig,
        tokenizer: TextTokenizer,
        cluster: ClusterView,
        pending: PendingPrefills,
        suspects: Suspects,
        decoding: PendingDecodes,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.cluster = cluster
        self._pending = pending
        self._decoding = decoding
        self._suspects = suspects
        self._policy = POLICIES[config.policy]
        self._turn = 0

    async def admit(self, request: Request, *, chat: bool) -> Admitted:
        """Parse, tokenize and route ``request``. Raises ``ApiError`` when it is refused."""
        body = parse_body(await request.body())
        parse = parse_chat if chat else parse_completion
        parsed = parse(body, self.config.model_name, self.tokenizer.vocab_size)
        token_ids = self._tokenize(parsed)
        snapshot = self.cluster.current()
        sampling = sampling_fields(
            parsed, len(token_ids), _max_model_len(snapshot), self.config.default_max_tokens
        )
        route = await self.route(snapshot, token_ids, sampling.max_tokens)
        return Admitted(parsed, token_ids, sampling, route)

    async def reroute(self, admitted: Admitted) -> Route:
        """Another route for a request a worker failed (that worker is a suspect by now)."""
        return await self.route(self.cluster.current(), admitted.token_ids, admitted.sampling.max_tokens)

    def _tokenize(self, parsed: ParsedRequest) -> list[int]:
        param = "messages" if parsed.chat else "prompt"
        try:
            if parsed.messages is not None:
                token_ids = self.tokenizer.apply_chat_template(parsed.messages)
            else:
                prompt = parsed.prompt
                token_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        except ValueError as e:
            raise ApiError(400, str(e), param=param) from e
        if not token_ids:
            raise ApiError(400, "the prompt tokenizes to nothing", param=param)
        return token_ids

    async def route(self, snapshot: ClusterSnapshot, token_ids: list[int], max_tokens: int) -> Route:
        """The conductor's decision for this prompt on ``snapshot``; a rejection raises ``ApiError``."""
        # every policy gets the cached prefixes (one index read): those that ignore them still have
        # their choice's cache predicted, so predicted vs realised hits compare across policies
        candidates = await self.cluster.prefill_candidates(snapshot, token_ids)
        trusted = self._suspects.trusted(candidates, lambda c: c.worker_id)
        candidates = tuple(self._pending.adjust(c) for c in trusted)
        decode = self._suspects.trusted(snapshot.by_role("decode"), lambda w: w.info.worker_id)
        decode = tuple(self._decoding.adjust(w) for w in decode)
        problem = RoutingProblem(len(token_ids), max_tokens, candidates, decode, self._turn)
        self._turn += 1
        decision = self._policy(problem, self.config.costs, self.config.slo)
        if isinstance(decision, Rejection):
            status = 429 if decision.reason in SLO_REASONS else 503
            raise ApiError(
                status, decision.message, code=decision.reason, retry_after_s=decision.retry_after_s
            )
        return decision


def _max_model_len(snapshot: ClusterSnapshot) -> int:
    """The context every worker can hold (workers may differ: take the smallest)."""
    return min(w.info.max_model_len for w in snapshot.by_role(*ROLES))
