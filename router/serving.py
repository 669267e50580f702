"""Serving one OpenAI request: admit (``admission``: parse → tokenize → route) → attempt
(generate → respond), with another attempt on other workers when a worker fails it before anything
of the response is sent (``dispatch.failures``); the router's metrics count every outcome.

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
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from router.admission import Admission, Admitted
from router.conductor import PendingDecodes, PendingPrefills, Route
from router.conductor.costs import cached_split, pages_needed
from router.config import RouterConfig
from router.dispatch.cluster import ClusterView
from router.dispatch.dispatcher import Dispatcher
from router.dispatch.failures import Suspects, should_retry
from router.dispatch.generation import Delta, Generation
from router.errors import ApiError
from router.observe.metrics import PrefillReport, RouterMetrics
from router.protocol import ParsedRequest
from router.responses import SSE_DONE, ResponseHead, sse, usage
from router.tokenizer import TextTokenizer

log = logging.getLogger(__name__)
T = TypeVar("T")
_REJECTED_CODES = {"no_workers", "no_decode", "cluster_unavailable", "ttft_slo", "tbt_slo"}
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class ClientGone(Exception):
    """The HTTP client disconnected before the response was complete."""


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if error.retry_after_s is not None:
        headers["retry-after"] = str(error.retry_after_s)
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


@dataclass(frozen=True)
class Job:
    """What every attempt at one admitted request shares."""

    head: ResponseHead  # the response's id, creation time and model
    admitted: Admitted
    arrived_at: float  # time.monotonic() at arrival: TTFT and E2E count from here


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
        self._pending = PendingPrefills()
        self._decoding = PendingDecodes()
        self._suspects = Suspects()
        self.admission = Admission(config, tokenizer, cluster, self._pending, self._suspects, self._decoding)

    async def serve(self, request: Request, *, chat: bool) -> Response:
        """Admit the request, then attempt it until it is answered: a worker's failure before
        anything of the response is sent is retried on other workers, up to ``max_retries`` times."""
        arrived_at = time.monotonic()
        try:
            admitted = await self.admission.admit(request, chat=chat)
        except ApiError as e:
            self._count_refusal(e)
            return error_response(e)
        request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        head = ResponseHead(request_id, int(time.time()), self.config.model_name, chat)
        job = Job(head, admitted, arrived_at)
        self.metrics.request_started()
        route, attempt = admitted.route, 0
        while True:  # one attempt per pass: only a failure another route may fix goes round again
            gen = self._generation(job, route, attempt)
            headers = _headers(job, gen, attempt)
            try:
                return await self._attempt(request, job, gen, headers)
            except ClientGone:
                self._finish(gen, "cancelled")
                return Response(status_code=499)
            except ApiError as failure:
                next_route = await self._after_failure(job, gen, failure, attempt)
                if isinstance(next_route, ApiError):
                    self._finish(gen, "failed")
                    log.warning("request %s failed: %s", request_id, next_route.message)
                    return error_response(next_route, headers)
            route, attempt = next_route, attempt + 1

    def _generation(self, job: Job, route: Route, attempt: int) -> Generation:
        request_id = job.head.request_id if not attempt else f"{job.head.request_id}.{attempt}"
        admitted = job.admitted
        return Generation(
            self.dispatcher, route, request_id, admitted.token_ids, admitted.sampling, decoder=self.tokenizer,
            stop=admitted.parsed.stop, timeout_s=self.config.request_timeout_s, arrived_at=job.arrived_at,
        )  # fmt: skip

    async def _attempt(
        self, request: Request, job: Job, gen: Generation, headers: dict[str, str]
    ) -> Response:
        """One attempt, up to its response. Raises ``ApiError`` (it failed) or ``ClientGone``.

        ``gen`` is closed when this returns or raises, except when it returns a stream: the
        stream then owns ``gen`` and closes it when it ends."""
        uncached = cached_split(gen.route.prefill, len(gen.token_ids))[2]
        self._pending.add(gen.request_id, gen.prefill_id, uncached)
        if gen.route.decode is not None:
            final_tokens = len(gen.token_ids) + job.admitted.sampling.max_tokens
            self._decoding.add(gen.request_id, gen.decode_id, pages_needed(gen.route.decode, final_tokens))
        streaming = False
        try:
            await gen.start()
            deltas = gen.deltas()
            first = await _until_disconnected(request, anext(deltas))
            self._pending.done(gen.request_id)  # prefilled: the worker's own reports cover the rest
            if job.admitted.parsed.stream:
                streaming = True
                stream = self._stream(gen, job.head, job.admitted.parsed, first, deltas)
                return StreamingResponse(
                    stream, media_type="text/event-stream", headers={**headers, **_SSE_HEADERS}
                )
            text = [first.text]
            if first.finish_reason is None:
                text += await _until_disconnected(request, _collect(deltas))
            body = job.head.complete("".join(text), gen.finish_reason, self._usage(gen))
            self._finish(gen, "ok")
            return JSONResponse(body, headers=headers)
        finally:
            if not streaming:
                gen.close()

    async def _after_failure(
        self, job: Job, gen: Generation, failure: ApiError, attempt: int
    ) -> Route | ApiError:
        """The route of the next attempt after ``failure``, or the error to answer with."""
        self._blame(failure)
        if not should_retry(failure, attempt, self.config.max_retries):
            return failure
        self._count_prefill(gen)  # the prefill worker counted it; so does the router
        try:  # the failed worker is a suspect now: the conductor avoids it
            route = await self.admission.reroute(job.admitted)
        except ApiError as reroute:
            return reroute
        self.metrics.retries.inc()
        log.warning(
            "request %s: %s; routing it again (retry %d)", job.head.request_id, failure.message, attempt + 1
        )
        return route

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
            self._blame(e)
            log.warning("request %s failed mid-stream: %s", gen.request_id, e.message)
            yield sse(e.body())
            yield SSE_DONE
        finally:
            gen.close()
            self._finish(gen, outcome)

    def _blame(self, error: ApiError) -> None:
        worker_id = self._suspects.blame(error)
        if worker_id is not None:
            self.metrics.worker_failures.labels(worker_id).inc()

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
        """An attempt is over: its decode KV is no longer committed, and its prefill is counted
        (once), if its prefill worker reported one."""
        self._pending.done(gen.request_id)
        self._decoding.done(gen.request_id)
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


def _headers(job: Job, gen: Generation, attempt: int) -> dict[str, str]:
    """Which workers serve this attempt, and how many attempts came before it."""
    headers = {
        "x-tandem-prefill": gen.prefill_id,
        "x-tandem-decode": gen.decode_id,
        "x-request-id": job.head.request_id,
    }
    if attempt:
        headers["x-tandem-retries"] = str(attempt)
    return headers


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
