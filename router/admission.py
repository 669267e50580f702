"""Admitting one OpenAI request: parse and validate its body, tokenize it (chat template
included), fix its sampling against the context left, and ask the conductor where it goes.

The conductor sees the cluster view less the workers that failed a request recently
(``Suspects``) and with the prefill work the router sent that the workers' reports may not show
yet (``PendingPrefills``). Every refusal is an ``ApiError``: 400 / 404 for the request itself,
429 when the conductor predicts an SLO miss, 503 when nothing can serve it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request

from router.conductor import POLICIES, PendingDecodes, PendingPrefills, Rejection, Route, RoutingProblem
from router.config import RouterConfig
from router.dispatch.cluster import ClusterSnapshot, ClusterView
from router.dispatch.failures import Suspects
from router.errors import ApiError
from router.protocol import (
    ParsedRequest,
    parse_chat,
    parse_completion,
    prompt_too_long,
    sampling_fields,
)
from router.tokenizer import TextTokenizer
from router.validation import parse_body
from transfer.messages import Sampling
from worker.types import ROLES

SLO_REASONS = ("ttft_slo", "tbt_slo")  # rejections that are 429 (the others: 503)


@dataclass(frozen=True)
class Choice:
    """One choice of a request (a prompt of a batch, one of its ``n`` samples): its prompt's token
    ids, its sampling, and its first route."""

    index: int  # in the response's choices: prompt i's sample j is i * n + j
    token_ids: list[int]
    sampling: Sampling  # this choice's own (``n`` 1, a seed of its own)
    route: Route
    # n > 1: the prompt's first choice prefills once for all its choices (``followers``: their
    # indices); the others follow it (``leader``: its index) unless it fails, then go alone
    followers: tuple[int, ...] = ()
    leader: int | None = None


@dataclass(frozen=True)
class Admitted:
    """A request that may be served: what it asks and its choices."""

    parsed: ParsedRequest
    choices: list[Choice]

    @property
    def num_prompt_tokens(self) -> int:
        """Usage's prompt tokens: each prompt's once, whatever ``n``."""
        return sum(len(c.token_ids) for c in self.choices[:: self.parsed.n])


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
        body = parse_body(await read_body(request, self.config.max_body_bytes, self.config.body_timeout_s))
        parse = parse_chat if chat else parse_completion
        parsed = parse(body, self.config.model_name, self.tokenizer.vocab_size)
        snapshot = self.cluster.current()
        max_model_len = _max_model_len(snapshot)
        self._check_length(parsed, max_model_len)
        # tokenizing (and rendering a chat) costs milliseconds per thousand tokens: off the event loop
        prompts = await asyncio.to_thread(self._tokenize, parsed)
        choices = []
        for i, token_ids in enumerate(prompts):
            sampling = sampling_fields(parsed, len(token_ids), max_model_len, self.config.default_max_tokens)
            route = await self.route(snapshot, token_ids, sampling.max_tokens)
            first, n = i * parsed.n, parsed.n
            followers = tuple(range(first + 1, first + n))
            choices.append(Choice(first, token_ids, sampling.for_choice(0), route, followers=followers))
            for j in range(1, n):
                choices.append(Choice(first + j, token_ids, sampling.for_choice(j), route, leader=first))
        return Admitted(parsed, choices)

    def max_model_len(self) -> int | None:
        """The context every live worker can hold (None while no worker is known)."""
        snapshot = self.cluster.snapshot
        return _max_model_len(snapshot) if snapshot.by_role(*ROLES) else None

    async def reroute(self, choice: Choice) -> Route:
        """Another route for a choice a worker failed (that worker is a suspect by now)."""
        return await self.route(self.cluster.current(), choice.token_ids, choice.sampling.max_tokens)

    def _check_length(self, parsed: ParsedRequest, max_model_len: int) -> None:
        """400 before tokenizing a text too long for the context whatever its tokens: at least
        ``len(text) / max_token_chars`` tokens (a chat's messages are inside its rendered text)."""
        if parsed.messages is not None:
            texts = ["".join(m["content"] or "" for m in parsed.messages)]
        else:
            texts = [p for p in parsed.prompts if isinstance(p, str)]
        chars = max(map(len, texts), default=0)
        at_least = chars // self.tokenizer.max_token_chars
        if at_least >= max_model_len:
            why = f"the prompt's {chars} characters are at least {at_least} tokens"
            raise prompt_too_long(parsed, max_model_len, why)

    def _tokenize(self, parsed: ParsedRequest) -> list[list[int]]:
        """Each prompt's token ids (a chat's: its rendered template)."""
        param = parsed.prompt_param
        try:
            if parsed.messages is not None:
                prompts = [self.tokenizer.apply_chat_template(parsed.messages)]
            else:
                prompts = [self.tokenizer.encode(p) if isinstance(p, str) else p for p in parsed.prompts]
            if parsed.suffix is not None:
                prompts = [self.tokenizer.fill_in_the_middle(p, parsed.suffix) for p in prompts]
        except ValueError as e:
            raise ApiError(400, str(e), param="suffix" if parsed.suffix is not None else param) from e
        if not all(prompts):
            raise ApiError(400, "the prompt tokenizes to nothing", param=param)
        return prompts

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


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request's body: 413 if it is (or claims to be) over ``max_bytes``, 408 if it has not
    arrived in full within ``timeout_s`` (a client that sends less than its Content-Length)."""
    too_large = ApiError(
        413, f"the request body exceeds this server's limit of {max_bytes} bytes", code="request_too_large"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408, f"the request body did not arrive within {timeout_s:g}s", code="request_timeout"
        ) from None
    return b"".join(chunks)


def _max_model_len(snapshot: ClusterSnapshot) -> int:
    """The context every worker can hold (workers may differ: take the smallest)."""
    return min(w.info.max_model_len for w in snapshot.by_role(*ROLES))
