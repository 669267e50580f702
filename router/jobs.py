"""One admitted request while it is served: its ``Job`` (what its attempts share, its deadline),
its ``Started`` choices, and the two things done over all of them: merging their deltas as they
arrive, and the headers that say which workers served it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from router.admission import Admitted, Choice
from router.dispatch.generation import Delta, Generation
from router.errors import ApiError
from router.render import ChoiceRender
from router.responses import ResponseHead


@dataclass(frozen=True)
class Job:
    """What every attempt at one admitted request shares."""

    head: ResponseHead  # the response's id, creation time and model
    admitted: Admitted
    arrived_at: float  # time.monotonic() at arrival: TTFT and E2E count from here
    deadline: float | None  # time.monotonic() by which the whole response must be done

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


@dataclass
class Started:
    """A choice whose first output arrived: its generation, that delta, and the rest to come."""

    choice: Choice
    gen: Generation
    first: Delta
    rest: AsyncIterator[Delta]
    attempt: int
    render: ChoiceRender


def headers(job: Job, started: list[Started]) -> dict[str, str]:
    """Which workers serve the request (comma-separated when its choices went to several), and
    how many attempts came before the last choice's."""
    headers = {
        "x-tandem-prefill": ",".join(dict.fromkeys(s.gen.prefill_id for s in started)),
        "x-tandem-decode": ",".join(dict.fromkeys(s.gen.decode_id for s in started)),
        "x-request-id": job.head.request_id,
    }
    retries = max((s.attempt for s in started), default=0)
    if retries:
        headers["x-tandem-retries"] = str(retries)
    return headers


async def merged(
    job: Job, started: list[Started], deadline_error: Callable[[], ApiError]
) -> AsyncIterator[tuple[Started, Delta]]:
    """The remaining deltas of every unfinished choice, as they arrive. Raises the ``ApiError`` of
    a choice that fails, or ``deadline_error()`` when the request's deadline passes."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(s: Started) -> None:
        try:
            async for delta in s.rest:
                await queue.put((s, delta, None))
        except ApiError as e:
            await queue.put((s, None, e))

    live = [s for s in started if s.first.finish_reason is None]
    pumps = [asyncio.ensure_future(pump(s)) for s in live]
    try:
        remaining = len(live)
        while remaining:
            try:
                async with asyncio.timeout(job.remaining_s()):
                    s, delta, error = await queue.get()
            except TimeoutError:
                raise deadline_error() from None
            if error is not None:
                raise error
            remaining -= delta.finish_reason is not None
            yield s, delta
    finally:
        for p in pumps:
            p.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
