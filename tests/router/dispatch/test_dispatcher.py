"""The dispatcher's bookkeeping of missing workers: lost only after the grace period, and aborts
kept for a missing worker until it is back."""

from __future__ import annotations

import asyncio

from router.dispatch.dispatcher import Dispatcher
from transfer.channel import Inbox
from transfer.messages import AbortTask


def test_a_worker_must_stay_missing_for_the_grace_period():
    dispatcher = Dispatcher("tcp://127.0.0.1:0", lost_grace_s=1.0)

    async def scenario():
        entry = dispatcher.open("r1", {"p", "d"})
        dispatcher.fail_lost({"p"}, now=10.0)  # d missing (a Redis restart, say)
        dispatcher.fail_lost({"p", "d"}, now=10.5)  # back: forgiven
        dispatcher.fail_lost({"p"}, now=11.0)
        dispatcher.fail_lost({"p"}, now=11.9)
        assert entry.queue.empty()
        dispatcher.fail_lost({"p"}, now=12.0)  # missing for the whole grace period
        assert entry.queue.get_nowait().worker_id == "d"

    try:
        asyncio.run(scenario())
    finally:
        dispatcher.stop()


def test_a_worker_restarted_under_its_old_name_has_lost_the_requests_of_the_old_one():
    dispatcher = Dispatcher("tcp://127.0.0.1:0", lost_grace_s=1.0)

    async def scenario():
        entry = dispatcher.open("r1", {"p#aaa", "d#bbb"})
        dispatcher.fail_lost({"p#aaa", "d#ccc"}, now=10.0)  # d is back within its lease: a new process
        dispatcher.fail_lost({"p#aaa", "d#ccc"}, now=11.0)
        assert entry.queue.get_nowait().worker_id == "d"  # named by its id, for the error and suspects

    try:
        asyncio.run(scenario())
    finally:
        dispatcher.stop()


def test_aborts_for_a_missing_worker_wait_until_it_is_back():
    worker = Inbox("tcp://127.0.0.1:0")
    dispatcher = Dispatcher("tcp://127.0.0.1:0", send_timeout_s=1.0)
    try:
        dispatcher.prune(set())  # the worker is missing from the registry
        dispatcher.abort_soon([worker.address], "r1")
        assert worker.recv(timeout_s=0.3) is None  # not sent to a worker that may be dead
        dispatcher.prune({worker.address})  # it heartbeats again: now it hears of it
        message = worker.recv(timeout_s=5)
        assert isinstance(message, AbortTask) and message.request_id == "r1"
        dispatcher.prune({worker.address})
        assert worker.recv(timeout_s=0.3) is None  # once
    finally:
        dispatcher.stop()
        worker.close()


def test_sends_queued_behind_a_timed_out_worker_fail_at_once(tmp_path):
    """Not one send timeout each: the first send to a dead worker waits it out, those right after
    fail at once (and their requests are routed elsewhere)."""
    import pytest

    from transfer.errors import PeerTimeout

    dead = f"ipc://{tmp_path}/dead-worker"
    dispatcher = Dispatcher("tcp://127.0.0.1:0", send_timeout_s=0.3)
    try:
        with pytest.raises(PeerTimeout, match="accepted nothing for 0.3s$"):  # waited
            dispatcher.send(dead, AbortTask("r1"))
        with pytest.raises(PeerTimeout, match=r"accepted nothing for 0.3s \(0\.\ds ago\)"):  # did not
            dispatcher.send(dead, AbortTask("r2"))
        worker = Inbox("tcp://127.0.0.1:0")
        try:
            dispatcher.send(worker.address, AbortTask("r3"))  # other workers are not affected
            assert worker.recv(timeout_s=5) == AbortTask("r3")
        finally:
            worker.close()
    finally:
        dispatcher.stop()
