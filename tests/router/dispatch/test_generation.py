"""A request's event handling, without HTTP: ordering, cache counts, failures, and lost workers."""

from __future__ import annotations

import asyncio

import pytest

from router.conductor import PrefillCandidate, Route
from router.dispatch.dispatcher import Dispatcher
from router.dispatch.generation import Generation
from router.errors import ApiError
from tests.router.test_detokenizer import ByteDecoder
from transfer.channel import Inbox
from transfer.messages import INTERNAL, GenerateTask, RequestFailed, Sampling, TokenEvent
from worker.types import WorkerInfo, WorkerLoad, WorkerState


def state(wid: str, role: str, address: str) -> WorkerState:
    return WorkerState(WorkerInfo(wid, role, address, "m", "ab", 16, 64, 2048), WorkerLoad())


@pytest.fixture
def channels():
    """A prefill and a decode inbox (stand-ins: tasks are read from them directly) and a dispatcher."""
    p_inbox, d_inbox = Inbox("tcp://127.0.0.1:0"), Inbox("tcp://127.0.0.1:0")
    dispatcher = Dispatcher("tcp://127.0.0.1:0", lost_grace_s=0.0)
    route = Route(
        PrefillCandidate(state("p", "prefill", p_inbox.address)), state("d", "decode", d_inbox.address)
    )
    yield dispatcher, route, p_inbox
    dispatcher.stop()
    p_inbox.close()
    d_inbox.close()


async def run(dispatcher: Dispatcher, route: Route, events: list, *, stop=(), lose: set[str] | None = None):
    dispatcher.start()
    gen = Generation(
        dispatcher,
        route,
        "r1",
        [1, 2, 3],
        Sampling(max_tokens=9),
        decoder=ByteDecoder(),
        stop=stop,
        timeout_s=2,
    )
    await gen.start()
    for event in events:
        dispatcher._deliver(event)
    if lose is not None:
        dispatcher.fail_lost(lose)
    try:
        return gen, [d async for d in gen.deltas()]
    finally:
        gen.close()


def test_decode_events_that_overtake_prefill_wait_for_it(channels):
    dispatcher, route, p_inbox = channels
    events = [
        TokenEvent("r1", "d", tuple(b"c"), None),
        TokenEvent("r1", "d", tuple(b"d"), "stop"),
        TokenEvent("other", "p", tuple(b"x"), None),  # not open: dropped
        TokenEvent("r1", "p", tuple(b"ab"), None, num_cached_local=32, num_cached_store=16),
    ]
    gen, deltas = asyncio.run(run(dispatcher, route, events))
    assert "".join(d.text for d in deltas) == "abcd" and deltas[-1].finish_reason == "stop"
    assert (gen.num_cached_local, gen.num_cached_store, gen.num_output_tokens) == (32, 16, 4)
    task = p_inbox.recv(timeout_s=2)
    assert isinstance(task, GenerateTask) and task.decode_address == route.decode.info.address
    assert task.reply_to == dispatcher.reply_to and task.token_ids == (1, 2, 3)


def test_worker_failure_raises_its_status(channels):
    dispatcher, route, _ = channels
    with pytest.raises(ApiError) as e:
        asyncio.run(run(dispatcher, route, [RequestFailed("r1", "p", INTERNAL, "boom")]))
    assert e.value.status == 500 and "boom" in e.value.message


def test_losing_a_worker_fails_the_request(channels):
    dispatcher, route, _ = channels
    first = TokenEvent("r1", "p", tuple(b"a"), None)
    with pytest.raises(ApiError) as e:
        asyncio.run(run(dispatcher, route, [first], lose={"p"}))
    assert e.value.status == 503 and e.value.code == "worker_lost" and "worker d stopped" in e.value.message


def test_once_the_decode_worker_has_the_request_only_it_matters(channels):
    dispatcher, route, _ = channels

    async def scenario():
        dispatcher.start()
        gen = Generation(
            dispatcher, route, "r1", [1], Sampling(max_tokens=9), decoder=ByteDecoder(), timeout_s=2
        )
        await gen.start()
        deltas = gen.deltas()
        dispatcher._deliver(TokenEvent("r1", "p", tuple(b"a"), None))
        dispatcher._deliver(TokenEvent("r1", "d", tuple(b"b"), None))
        dispatcher.fail_lost({"d"})  # the prefill worker is gone: no matter now
        assert (await anext(deltas)).text == "a"
        assert (await anext(deltas)).text == "b"
        dispatcher._deliver(TokenEvent("r1", "d", tuple(b"c"), "length"))
        last = await anext(deltas)
        gen.close()
        return last

    last = asyncio.run(scenario())
    assert (last.text, last.finish_reason) == ("c", "length")


def test_a_prefill_worker_lost_before_its_hand_off_arrived_fails_the_stream(channels):
    """Its first token is out, but the decode worker has not spoken: the KV may never come."""
    dispatcher, route, _ = channels
    first = TokenEvent("r1", "p", tuple(b"a"), None)
    with pytest.raises(ApiError) as e:
        asyncio.run(run(dispatcher, route, [first], lose={"d"}))
    assert e.value.code == "worker_lost" and "worker p stopped" in e.value.message


def test_stop_string_ends_the_request(channels):
    dispatcher, route, _ = channels
    events = [TokenEvent("r1", "p", tuple(b"ab"), None), TokenEvent("r1", "d", tuple(b"cXd"), None)]
    gen, deltas = asyncio.run(run(dispatcher, route, events, stop=("X",)))
    assert "".join(d.text for d in deltas) == "abc" and gen.finish_reason == "stop"
