"""A worker's graceful stop: when the drain lets it go (``worker.drain.Drain`` on a fake clock), what
a draining worker takes and refuses (real workers on a tiny model, in this process), and the loop
publishing ``draining`` at once and deregistering when done (real Redis, real inbox)."""

from __future__ import annotations

import threading
import time

import pytest

from colocated.worker import ColocatedWorker
from engine import LLM
from prefill.worker import PrefillWorker
from tests.engine.conftest import build_tiny
from tests.kvstore.procs import wait_until
from transfer.channel import Inbox
from transfer.messages import DRAINING, GenerateTask, RequestFailed, Sampling, TokenEvent
from worker import drain as drain_module
from worker.drain import Drain
from worker.loop import run_worker_loop
from worker.registry import WorkerRegistry
from worker.types import WorkerInfo, WorkerLoad


class FakeWorker:
    """What a ``Drain`` sees of a worker: requests held, and what ``abandon`` failed."""

    def __init__(self, held: int) -> None:
        self.num_held = held
        self.draining = False
        self.abandoned: list[str] = []

    def start(self) -> int:
        self.draining = True
        return self.num_held

    def abandon(self, reason: str) -> int:
        self.abandoned.append(reason)
        n, self.num_held = self.num_held, 0
        return n


def fake_drain(held: int, timeout_s: float = 10.0, notice_s: float = 3.0):
    clock = {"now": 100.0}
    worker = FakeWorker(held)
    drain = Drain(
        threading.Event(), timeout_s, worker.start, lambda: worker.num_held, worker.abandon,
        notice_s=notice_s, clock=lambda: clock["now"],
    )  # fmt: skip
    drain.begin()
    return drain, worker, clock


def test_a_drain_waits_for_the_requests_held_the_sends_and_the_notice():
    drain, worker, clock = fake_drain(held=2)
    assert worker.draining
    clock["now"] += 5.0  # past the notice, but requests are held
    assert not drain.finished(busy=True, waiting=0)
    worker.num_held = 0
    assert not drain.finished(busy=True, waiting=0), "a step just ran: its sends may still be queued"
    clock["now"] += drain_module.QUIET_S / 2
    assert not drain.finished(busy=False, waiting=1), "a message waits for its peer"
    clock["now"] += drain_module.QUIET_S / 2
    assert not drain.finished(busy=False, waiting=0), "the last send was less than QUIET_S ago"
    clock["now"] += drain_module.QUIET_S
    assert drain.finished(busy=False, waiting=0)
    assert worker.abandoned == []


def test_an_idle_worker_stays_reachable_for_the_notice():
    drain, _, clock = fake_drain(held=0, notice_s=3.0)
    clock["now"] += 2.9
    assert not drain.finished(busy=False, waiting=0)
    clock["now"] += 0.2
    assert drain.finished(busy=False, waiting=0)


def test_past_its_timeout_a_drain_fails_what_is_held_and_exits_after_a_farewell():
    drain, worker, clock = fake_drain(held=3, timeout_s=5.0)
    clock["now"] += 4.9
    assert not drain.finished(busy=True, waiting=0) and worker.abandoned == []
    clock["now"] += 0.2
    assert not drain.finished(busy=True, waiting=2), "the failures are still being sent"
    assert len(worker.abandoned) == 1 and "drain timeout of 5s" in worker.abandoned[0]
    clock["now"] += drain_module.FAREWELL_S
    assert drain.finished(busy=False, waiting=2), "a peer that takes nothing does not hold the exit"


def test_a_drain_needs_a_positive_timeout():
    with pytest.raises(ValueError, match="timeout_s"):
        Drain(threading.Event(), 0.0, lambda: 0, lambda: 0, lambda _: 0)


# ---- real workers ---------------------------------------------------------------------------

PAGE = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny("llama", tmp_path_factory.mktemp("drain-llama"))


@pytest.fixture
def inbox():
    box = Inbox("tcp://127.0.0.1:0")
    yield box
    box.close()


def make_worker(cls, model, role: str):
    engine = LLM(str(model), page_size=PAGE, num_pages=48).engine
    info = WorkerInfo(f"{role}-0", role, "tcp://127.0.0.1:1", "tiny", engine.fingerprint.hex(), PAGE, 16,
                      engine.max_model_len)  # fmt: skip
    return cls(engine, info)


def task(request_id: str, reply_to: str, max_tokens: int = 20) -> GenerateTask:
    sampling = Sampling(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return GenerateTask(request_id, (5, 6, 7, 8), sampling, reply_to, None)


def replies(worker, inbox: Inbox, until) -> list:
    """Step and flush the worker, collecting what reaches ``inbox``, until ``until(replies)``."""
    got: list = []
    deadline = time.monotonic() + 30
    while not until(got):
        assert time.monotonic() < deadline, f"only got {got}"
        if worker.has_work():
            worker.step()
        worker.flush()
        while (message := inbox.recv(0.01)) is not None:
            got.append(message)
    return got


def test_a_draining_worker_refuses_new_prompts_and_finishes_what_it_holds(model, inbox):
    worker = make_worker(ColocatedWorker, model, "colocated")
    try:
        worker.handle(task("held", inbox.address))
        worker.step()
        assert worker.start_drain() == 1 and worker.report().draining
        worker.handle(task("new", inbox.address))
        got = replies(worker, inbox, lambda g: any(getattr(m, "finish_reason", None) for m in g))
        (refused,) = [m for m in got if m.request_id == "new"]
        assert isinstance(refused, RequestFailed) and refused.code == DRAINING
        assert "draining" in refused.message
        held = [m for m in got if m.request_id == "held"]
        assert all(isinstance(m, TokenEvent) for m in held)
        assert sum(len(m.token_ids) for m in held) == 20 and held[-1].finish_reason == "length"
        assert worker.held() == {} and worker.engine.pool.num_used_pages == 0
    finally:
        worker.close()


def test_abandon_fails_every_request_held_and_frees_its_pages(model, inbox):
    worker = make_worker(PrefillWorker, model, "prefill")
    try:
        for rid in ("a", "b"):
            worker.handle(task(rid, inbox.address))
        assert set(worker.held()) == {"a", "b"}
        assert worker.abandon("shutting down") == 2
        got = replies(worker, inbox, lambda g: len(g) == 2)
        assert {m.request_id for m in got} == {"a", "b"}
        assert all(isinstance(m, RequestFailed) and m.code == DRAINING for m in got)
        assert worker.held() == {} and not worker.has_work()
        assert worker.engine.pool.num_used_pages == 0
    finally:
        worker.close()


# ---- the loop ---------------------------------------------------------------------------------


def test_the_loop_publishes_draining_at_once_and_deregisters_when_drained(redis_server):
    info = WorkerInfo("decode-0", "decode", "tcp://127.0.0.1:1", "m", "ab", 16, 64, 2048)
    registry = WorkerRegistry(redis_server.url)
    worker = FakeWorker(held=1)
    requested, stop = threading.Event(), threading.Event()
    drain = Drain(requested, 30.0, worker.start, lambda: worker.num_held, worker.abandon, notice_s=0.0)
    inbox = Inbox("tcp://127.0.0.1:0")
    loop = threading.Thread(target=run_worker_loop, args=(info, inbox, registry), kwargs=dict(
        handle=lambda m: None, step=lambda: None, has_work=lambda: False,
        report=lambda: WorkerLoad(draining=worker.draining), stop=stop, drain=drain, heartbeat_s=60.0,
    ))  # fmt: skip
    loop.start()
    try:
        wait_until(lambda: [w.load.draining for w in registry.live()] == [False], 10, "registration")
        requested.set()  # the heartbeat is a minute away: only the loop can publish it this soon
        wait_until(lambda: [w.load.draining for w in registry.live()] == [True], 10, "draining published")
        assert loop.is_alive(), "a request is still held"
        worker.num_held = 0
        loop.join(timeout=10)
        assert not loop.is_alive() and registry.live() == []
    finally:
        stop.set()
        loop.join(timeout=10)
        inbox.close()
        registry.close()
