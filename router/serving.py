"""Serving one OpenAI request: parse → tokenize → route (conductor) → generate → respond.

Every failure before the first token is an HTTP error with its status (the response waits for the
first token before it commits to 200, streaming or not); a failure after it, in a stream, is an
SSE error event followed by ``[DONE]``. A client that goes away cancels the request on the
workers. Which workers served a request is in the ``x-tandem-prefill`` / ``x-tandem-decode``
headers (the same worker twice in colocated mode).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from router.cluster import SERVING_ROLES, ClusterSnapshot, ClusterView
from router.config import RouterConfig
from router.costs import cached_split
from router.dispatch import Dispatcher
from router.generation import Delta, Generation
from router.metrics import PrefillReport, RouterMetrics
from router.pending import PendingPrefills
from router.policies import POLICIES
from router.protocol import ParsedRequest, parse_chat, parse_completion, sampling_fields
from router.responses import SSE_DONE, ResponseHead, sse, usage
from router.tokenizer import TextTokenizer
from router.types import ApiError, Rejection, Route, RoutingProblem
from router.validation import parse_body

log = logging.getLogger(__name__)
T = TypeVar("T")
_REJECTED_CODES = {"no_workers", "no_decode", "cluster_unavailable", "ttft_slo", "tbt_slo"}
# A worker that just failed a request (unreachable, silent, refused the KV) gets no new requests for
# this long, unless no other worker of its kind is live: longer than the registry's heartbeat TTL
# (3 s), so a dead one has dropped out of the registry by the time it would be tried again.
SUSPECT_S = 5.0


class ClientGone(Exception):
    """The HTTP client disconnected before the response was complete."""


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if error.retry_after_s is not None:
        headers["retry-after"] = str(error.retry_after_s)
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class Router:
    def __init__(
        self,
        config: RouterConfig,
        tokenizer: TextTokenizer,
        dispatcher: Dispatcher,
        cluster: ClusterView,
        metrics: RouterMetrics,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.dispatcher = dispatcher
        self.cluster = cluster
        self.metrics = metrics
        self._policy = POLICIES[config.policy]
        self._turn = 0
        self._pending = PendingPrefills()
        self._suspects: dict[str, float] = {}  # worker id -> until (time.monotonic())

    async def serve(self, request: Request, *, chat: bool) -> Response:
        arrived_at = time.monotonic()
        try:
            parsed, token_ids, route, sampling = await self._admit(request, chat=chat)
        except ApiError as e:
            self._count_refusal(e)
            return error_response(e)
        prefix = "chatcmpl-" if chat else "cmpl-"
        request_id = prefix + uuid.uuid4().hex
        head = ResponseHead(request_id, int(time.time()), self.config.model_name, chat)
        self.metrics.request_started()
        attempt = 0
        while True:  # one pass per attempt: a worker's failure before any response is sent is retried
            gen = Generation(
                self.dispatcher, route, request_id if not attempt else f"{request_id}.{attempt}", token_ids, sampling,
                decoder=self.tokenizer, stop=parsed.stop, timeout_s=self.config.request_timeout_s, arrived_at=arrived_at,
            )  # fmt: skip
            headers = {
                "x-tandem-prefill": gen.prefill_id,
                "x-tandem-decode": gen.decode_id,
                "x-request-id": request_id,
            }
            if attempt:
                headers["x-tandem-retries"] = str(attempt)
            self._pending.add(
                gen.request_id, route.prefill.worker_id, cached_split(route.prefill, len(token_ids))[2]
            )
            streaming = False
            try:
                await gen.start()
                deltas = gen.deltas()
                first = await _until_disconnected(request, anext(deltas))
                self._pending.done(gen.request_id)  # prefilled: the worker's own reports cover the rest
                if parsed.stream:
                    streaming = True
                    stream = self._stream(gen, head, parsed, first, deltas)
                    sse_headers = {**headers, "cache-control": "no-cache", "x-accel-buffering": "no"}
                    return StreamingResponse(stream, media_type="text/event-stream", headers=sse_headers)
                text = [first.text]
                if first.finish_reason is None:
                    text += await _until_disconnected(request, _collect(deltas))
                body = head.complete("".join(text), gen.finish_reason, self._usage(gen))
                self._finish(gen, "ok")
                return JSONResponse(body, headers=headers)
            except ApiError as e:
                self._suspect(e)
                error = e
                if e.failed_worker is not None and attempt < self.config.max_retries:
                    self._count_prefill(gen)  # the prefill worker counted it; so does the router
                    try:  # the failed worker is a suspect now: the conductor avoids it
                        route = await self._route(self.cluster.current(), token_ids, sampling["max_tokens"])
                        attempt += 1
                        self.metrics.retries.inc()
                        log.warning(
                            "request %s: %s; routing it again (retry %d)", request_id, e.message, attempt
                        )
                        continue
                    except ApiError as reroute:
                        error = reroute
                self._finish(gen, "failed")
                log.warning("request %s failed: %s", request_id, error.message)
                return error_response(error, headers)
            except ClientGone:
                self._finish(gen, "cancelled")
                return Response(status_code=499)
            finally:
                if not streaming:
                    gen.close()

    async def _admit(self, request: Request, *, chat: bool) -> tuple[ParsedRequest, list[int], Route, dict]:
        body = parse_body(await request.body())
        parse = parse_chat if chat else parse_completion
        parsed = parse(body, self.config.model_name, self.tokenizer.vocab_size)
        try:
            if parsed.messages is not None:
                token_ids = self.tokenizer.apply_chat_template(parsed.messages)
            else:
                token_ids = (
                    self.tokenizer.encode(parsed.prompt) if isinstance(parsed.prompt, str) else parsed.prompt
                )
        except ValueError as e:
            raise ApiError(400, str(e), param="messages" if chat else "prompt") from e
        if not token_ids:
            raise ApiError(400, "the prompt tokenizes to nothing", param="messages" if chat else "prompt")
        snapshot = self.cluster.current()
        sampling = sampling_fields(
            parsed, len(token_ids), _max_model_len(snapshot), self.config.default_max_tokens
        )
        route = await self._route(snapshot, token_ids, sampling["max_tokens"])
        return parsed, token_ids, route, sampling

    async def _route(self, snapshot: ClusterSnapshot, token_ids: list[int], max_tokens: int) -> Route:
        # every policy gets the cached prefixes (one index read): those that ignore them still have
        # their choice's cache predicted, so predicted vs realised hits compare across policies
        candidates = await self.cluster.prefill_candidates(snapshot, token_ids)
        candidates = tuple(self._pending.adjust(c) for c in self._trusted(candidates, lambda c: c.worker_id))
        decode = self._trusted(snapshot.by_role("decode"), lambda w: w.info.worker_id)
        problem = RoutingProblem(len(token_ids), max_tokens, candidates, decode, self._turn)
        self._turn += 1
        decision = self._policy(problem, self.config.costs, self.config.slo)
        if isinstance(decision, Rejection):
            status = 429 if decision.reason in ("ttft_slo", "tbt_slo") else 503
            raise ApiError(
                status, decision.message, code=decision.reason, retry_after_s=decision.retry_after_s
            )
        return decision

    async def _stream(
        self,
        gen: Generation,
        head: ResponseHead,
        parsed: ParsedRequest,
        first: Delta,
        rest: AsyncIterator[Delta],
    ) -> AsyncIterator[bytes]:
        outcome = "cancelled"  # unless it gets to the end: Starlette cancels us when the client leaves
        try:
            with_usage = parsed.include_usage
            yield sse(head.chunk(first.text, first.finish_reason, first=True, with_usage_field=with_usage))
            if first.finish_reason is None:
                async for delta in rest:
                    if delta.text or delta.finish_reason is not None:
                        yield sse(head.chunk(delta.text, delta.finish_reason, with_usage_field=with_usage))
            if with_usage:
                yield sse(head.usage_chunk(self._usage(gen)))
            outcome = "ok"
            yield SSE_DONE
        except ApiError as e:
            outcome = "failed"
            self._suspect(e)
            log.warning("request %s failed mid-stream: %s", gen.request_id, e.message)
            yield sse(e.body())
            yield SSE_DONE
        finally:
            gen.close()
            self._finish(gen, outcome)

    def _suspect(self, error: ApiError) -> None:
        if error.failed_worker is not None:
            self.metrics.worker_failures.labels(error.failed_worker).inc()
            log.warning("avoiding worker %s for %gs: %s", error.failed_worker, SUSPECT_S, error.message)
            self._suspects[error.failed_worker] = time.monotonic() + SUSPECT_S

    def _trusted(self, workers: tuple[T, ...], worker_id: Callable[[T], str]) -> tuple[T, ...]:
        """``workers`` less the recent suspects, or all of them if none else is left."""
        now = time.monotonic()
        self._suspects = {w: until for w, until in self._suspects.items() if until > now}
        trusted = tuple(w for w in workers if worker_id(w) not in self._suspects)
        return trusted or workers

    def _usage(self, gen: Generation) -> dict[str, Any]:
        cached = gen.num_cached_local + gen.num_cached_store
        return usage(len(gen.token_ids), gen.num_output_tokens, cached)

    def _count_refusal(self, error: ApiError) -> None:
        if error.code in _REJECTED_CODES:
            self.metrics.requests.labels("rejected").inc()
            self.metrics.rejections.labels(error.code).inc()
        else:
            self.metrics.requests.labels("invalid" if error.status < 500 else "failed").inc()

    def _count_prefill(self, gen: Generation) -> None:
        """Count an attempt's prefill (once), if its prefill worker reported one."""
        self._pending.done(gen.request_id)
        if gen.first_token_at is None or gen.prefill_counted:  # never reported: nothing was reused
            return
        gen.prefill_counted = True
        predicted = gen.route.prefill
        self.metrics.prefilled(
            PrefillReport(
                gen.prefill_id, len(gen.token_ids), gen.num_cached_local, gen.num_cached_store,
                predicted.cached_local_tokens, predicted.cached_store_tokens,
            )
        )  # fmt: skip

    def _finish(self, gen: Generation, outcome: str) -> None:
        self._count_prefill(gen)
        m = self.metrics
        m.request_ended()
        m.requests.labels(outcome).inc()
        m.generation_tokens.inc(gen.num_output_tokens)
        if gen.first_token_at is None:
            return
        ttft = gen.first_token_at - gen.started_at
        m.ttft.observe(ttft)
        for before, after in zip(gen.token_times, gen.token_times[1:]):
            m.itl.observe(after - before)
        if outcome == "ok":
            e2e = time.monotonic() - gen.started_at
            m.e2e.observe(e2e)
            if gen.num_output_tokens > 1:
                m.tpot.observe((e2e - ttft) / (gen.num_output_tokens - 1))


def _max_model_len(snapshot: ClusterSnapshot) -> int:
    """The context every worker can hold (workers may differ: take the smallest)."""
    return min(w.info.max_model_len for w in snapshot.by_role(*SERVING_ROLES))


async def _collect(deltas: AsyncIterator[Delta]) -> list[str]:
    return [d.text async for d in deltas]


async def _until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first (then cancel it, raise ``ClientGone``).

    Only valid once the request body has been read: every later ASGI message is a disconnect.
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(request.receive())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone()
    finally:
        if not watch.done():
            watch.cancel()
