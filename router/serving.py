"""Serving one OpenAI request: admit (``admission``: parse → tokenize → route) → start each of its
choices (a batch's prompts times ``n``; a worker's failure before a choice's first token is tried
again on other workers, ``dispatch.failures``) → respond; the router's metrics count every outcome.

Every failure before the first tokens is an HTTP error with its status (the response waits for
every choice's first token before it commits to 200, streaming or not); a failure after it, in a
stream, is an SSE error event followed by ``[DONE]``. A client that goes away, or a request past
its deadline (``request_timeout_s``), cancels the request on the workers. Which workers served a
request is in the ``x-tandem-prefill`` / ``x-tandem-decode`` headers (the same worker twice in
colocated mode; comma-separated when its choices went to several).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from router.accounting import Accounting
from router.admission import Admission, Choice
from router.conductor import PendingDecodes, PendingPrefills, Route
from router.conductor.costs import cached_split, pages_needed
from router.config import RouterConfig
from router.dispatch.cluster import ClusterView
from router.dispatch.dispatcher import Dispatcher
from router.dispatch.failures import Suspects, should_retry
from router.dispatch.generation import Delta, Generation
from router.errors import ApiError
from router.jobs import Job, Started, headers, merged
from router.observe.metrics import RouterMetrics
from router.render import ChoiceRender
from router.responses import NO_USAGE, SSE_DONE, ResponseHead, sse, usage
from router.tokenizer import TextTokenizer

log = logging.getLogger(__name__)
T = TypeVar("T")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class ClientGone(Exception):
    """The HTTP client disconnected before the response was complete."""


class _LeaderFailed(Exception):
    """The choice that was to prefill for this one failed before its first token."""


def _settle(led: dict[int, asyncio.Future], choice: Choice) -> None:
    """A leader's first attempt is over without a first token: its followers go alone."""
    future = led.get(choice.index)
    if future is not None and not future.done():
        future.set_result(False)


def _choice_id(job: Job, index: int, attempt: int) -> str:
    """The request id workers know a choice's attempt by."""
    request_id = job.head.request_id
    if len(job.admitted.choices) > 1:
        request_id += f"-{index}"
    return f"{request_id}.{attempt}" if attempt else request_id


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
        self._pending = PendingPrefills()
        self._decoding = PendingDecodes()
        self._suspects = Suspects()
        self.admission = Admission(config, tokenizer, cluster, self._pending, self._suspects, self._decoding)
        self.accounting = Accounting(metrics, self._pending, self._decoding)

    async def serve(self, request: Request, *, chat: bool) -> Response:
        """Admit the request, start each of its choices, then answer: whole, or as a stream that
        owns the choices from then on."""
        arrived_at = time.monotonic()
        try:
            self._check_capacity()
            admitted = await self.admission.admit(request, chat=chat)
        except ApiError as e:
            self.accounting.refused(e)
            return error_response(e)
        request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        head = ResponseHead(request_id, int(time.time()), self.config.model_name, chat)
        timeout_s = self.config.request_timeout_s
        job = Job(head, admitted, arrived_at, arrived_at + timeout_s if timeout_s is not None else None)
        self.accounting.started()
        started: list[Started] = []
        try:
            started = await _until_disconnected(request, self._start_all(job))
            if admitted.parsed.stream:
                sse_headers = {**headers(job, started), **_SSE_HEADERS}
                stream, started = self._stream(job, started), []  # the stream owns them now
                return StreamingResponse(stream, media_type="text/event-stream", headers=sse_headers)
            body = await _until_disconnected(request, self._collect(job, started))
            self.accounting.ended([s.gen for s in started], "ok")
            return JSONResponse(body, headers=headers(job, started))
        except ClientGone:
            self.accounting.ended([s.gen for s in started], "cancelled")
            return Response(status_code=499)
        except ApiError as e:
            self.accounting.ended([s.gen for s in started], "failed")
            log.warning("request %s failed: %s", request_id, e.message)
            return error_response(e, {**e.headers, "x-request-id": request_id})
        finally:
            for s in started:
                s.gen.close()

    def _check_capacity(self) -> None:
        """429 beyond ``max_in_flight`` admitted requests, whatever the policy."""
        limit = self.config.max_in_flight
        if limit is not None and self.accounting.num_in_flight >= limit:
            raise ApiError(
                429, f"this server is serving its limit of {limit} requests at once; retry shortly",
                code="too_many_requests", retry_after_s=1,
            )  # fmt: skip

    async def _start_all(self, job: Job) -> list[Started]:
        """Every choice started, in index order. If one fails, or the deadline passes first, the
        others are closed and the error raised."""
        choices = job.admitted.choices
        led = {c.index: asyncio.get_running_loop().create_future() for c in choices if c.followers}
        # followers first: each listens for its events before its leader sends the shared task
        order = sorted(choices, key=lambda c: c.leader is None)
        by_index = {c.index: asyncio.ensure_future(self._start_choice(job, c, led)) for c in order}
        tasks = [by_index[c.index] for c in choices]
        try:
            async with asyncio.timeout(job.remaining_s()):
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except TimeoutError:
            pass  # what has not started is cancelled below
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        ok = [t for t in tasks if not t.cancelled() and t.exception() is None]
        if len(ok) == len(tasks):
            return [t.result() for t in tasks]
        for t in ok:
            t.result().gen.close()
            self.accounting.finish(t.result().gen, "failed")
        errors = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
        raise errors[0] if errors else self._deadline_error()

    def _deadline_error(self) -> ApiError:
        return ApiError(
            504, f"the request did not complete within this server's limit of {self.config.request_timeout_s:g}s",
            code="request_timeout",
        )  # fmt: skip

    async def _start_choice(self, job: Job, choice: Choice, led: dict[int, asyncio.Future]) -> Started:
        """A choice up to its first output, attempt after attempt. Raises ``ApiError``.

        A leader's first attempt prefills for its followers too; a follower's first attempt only
        listens, and goes on alone (another attempt, routed again) if its leader's fails."""
        route, attempt = choice.route, 0
        while True:  # one attempt per pass: only a failure another route may fix goes round again
            gen = self._generation(job, choice, route, attempt)
            following = attempt == 0 and choice.leader is not None
            try:
                if following:
                    gen.listen()
                    if not await asyncio.shield(led[choice.leader]):
                        raise _LeaderFailed()
                first, rest = await self._first_delta(choice, gen, send=not following)
                if attempt == 0 and choice.followers:
                    led[choice.index].set_result(True)
                render = ChoiceRender(job.admitted.parsed, choice, gen, self.tokenizer)
                return Started(choice, gen, first, rest, attempt, render)
            except _LeaderFailed:
                gen.close()
                next_route = await self.admission.reroute(choice)
            except ApiError as failure:
                gen.close()
                _settle(led, choice)
                next_route = await self._after_failure(job, choice, gen, failure, attempt)
                if isinstance(next_route, ApiError):
                    self.accounting.finish(gen, "failed")
                    next_route.headers = {
                        "x-tandem-prefill": gen.prefill_id,
                        "x-tandem-decode": gen.decode_id,
                    }
                    raise next_route from None
            except BaseException:
                gen.close()
                _settle(led, choice)
                self.accounting.finish(gen, "cancelled")
                raise
            route, attempt = next_route, attempt + 1

    def _generation(self, job: Job, choice: Choice, route: Route, attempt: int) -> Generation:
        sampling, choice_ids = choice.sampling, ()
        if attempt == 0 and choice.followers:  # one prefill for every choice of the prompt
            sampling = dataclasses.replace(sampling, n=len(choice.followers) + 1)
            choice_ids = tuple(_choice_id(job, i, 0) for i in choice.followers)
        return Generation(
            self.dispatcher, route, _choice_id(job, choice.index, attempt), choice.token_ids, sampling,
            decoder=self.tokenizer, stop=job.admitted.parsed.stop, timeout_s=self.config.event_timeout_s,
            arrived_at=job.arrived_at, choice_ids=choice_ids,
        )  # fmt: skip

    async def _first_delta(
        self, choice: Choice, gen: Generation, *, send: bool = True
    ) -> tuple[Delta, AsyncIterator[Delta]]:
        """Send the task (unless another choice's carries this one) and wait for the first output.
        Raises ``ApiError``."""
        if gen.route.decode is not None:
            final_tokens = len(gen.token_ids) + choice.sampling.max_tokens
            self._decoding.add(gen.request_id, gen.decode_id, pages_needed(gen.route.decode, final_tokens))
        if send:  # the prefill work is the sender's: a follower adds none
            uncached = cached_split(gen.route.prefill, len(gen.token_ids))[2]
            self._pending.add(gen.request_id, gen.prefill_id, uncached)
            await gen.start()
        deltas = gen.deltas()
        first = await anext(deltas)
        self._pending.done(gen.request_id)  # prefilled: the worker's own reports cover the rest
        return first, deltas

    async def _after_failure(
        self, job: Job, choice: Choice, gen: Generation, failure: ApiError, attempt: int
    ) -> Route | ApiError:
        """The route of the next attempt after ``failure``, or the error to answer with."""
        self._blame(failure)
        if not should_retry(failure, attempt, self.config.max_retries):
            return failure
        self.accounting.count_prefill(gen)  # the prefill worker counted it; so does the router
        try:  # the failed worker is a suspect now: the conductor avoids it
            route = await self.admission.reroute(choice)
        except ApiError as reroute:
            return reroute
        self.metrics.retries.inc()
        log.warning(
            "request %s: %s; routing it again (retry %d)", job.head.request_id, failure.message, attempt + 1
        )
        return route

    async def _collect(self, job: Job, started: list[Started]) -> dict[str, Any]:
        """The whole response body, once every choice has finished."""
        for s in started:
            s.render.add(s.first)
        async for s, delta in merged(job, started, self._deadline_error):
            s.render.add(delta)
        choices = [s.render.choice(job.head) for s in started]
        return job.head.complete(choices, self._usage(job, started))

    async def _stream(self, job: Job, started: list[Started]) -> AsyncIterator[bytes]:
        outcome = "cancelled"  # unless it gets to the end: Starlette cancels us when the client leaves
        parsed, head = job.admitted.parsed, job.head
        try:
            for s in started:
                yield sse(self._chunk(job, started, s, s.first, first=True))
            async for s, delta in merged(job, started, self._deadline_error):
                chunk = self._chunk(job, started, s, delta)  # counts the delta's tokens, sent or not
                if (
                    delta.text
                    or delta.finish_reason is not None
                    or (delta.token_ids and parsed.logprobs is not None)
                ):
                    yield sse(chunk)
            if parsed.include_usage:
                yield sse(head.usage_chunk(self._usage(job, started)))
            outcome = "ok"
            yield SSE_DONE
        except ApiError as e:
            outcome = "failed"
            self._blame(e)
            log.warning("request %s failed mid-stream: %s", head.request_id, e.message)
            yield sse(e.body())
            yield SSE_DONE
        finally:
            for s in started:
                s.gen.close()
            self.accounting.ended([s.gen for s in started], outcome)

    def _chunk(
        self, job: Job, started: list[Started], s: Started, delta: Delta, *, first: bool = False
    ) -> dict:
        parsed = job.admitted.parsed
        text, logprobs, finish_reason = s.render.delta(delta, first=first)
        usage_body: dict[str, Any] | None = NO_USAGE
        if parsed.continuous_usage:
            usage_body = self._usage(job, started)
        elif parsed.include_usage:
            usage_body = None
        return job.head.chunk(
            s.choice.index, text, finish_reason, first=first, logprobs=logprobs, usage_body=usage_body
        )

    def _blame(self, error: ApiError) -> None:
        worker_id = self._suspects.blame(error)
        if worker_id is not None:
            self.metrics.worker_failures.labels(worker_id).inc()

    def _usage(self, job: Job, started: list[Started]) -> dict[str, Any]:
        n = job.admitted.parsed.n
        cached = sum(s.gen.num_cached_local + s.gen.num_cached_store for s in started[::n])
        completion = sum(s.render.num_output_tokens for s in started)
        return usage(job.admitted.num_prompt_tokens, completion, cached)


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
