"""An OutboxPool never waits on a peer: what a peer cannot take waits in that peer's queue, in
order, until it is taken or dropped (with the reason to its sender)."""

from __future__ import annotations

import pytest

from transfer.channel import Inbox, OutboxPool
from transfer.messages import AbortTask


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def nowhere(tmp_path) -> str:
    """An address nobody listens on (an IPC path with no socket behind it)."""
    return f"ipc://{tmp_path}/nobody-listens"


def received(pool: OutboxPool, inbox: Inbox, n: int) -> list:
    """The first ``n`` messages ``inbox`` gets while ``pool`` is flushed, as a worker's loop does
    (the first message to a new peer waits in its queue until the connection is up)."""
    got = []
    while len(got) < n:
        pool.flush()
        message = inbox.recv(0.2)
        if message is not None:
            got.append(message)
    return got


def test_a_peer_that_is_not_there_costs_nothing_and_its_messages_are_dropped_with_the_reason(nowhere):
    clock, dropped = Clock(), []
    pool = OutboxPool(timeout_s=5.0, clock=clock)
    inbox = Inbox("tcp://127.0.0.1:0")
    try:
        for i in range(3):
            pool.send(nowhere, AbortTask(f"lost-{i}"), dropped.append)  # returns at once: queued
        assert pool.num_queued == 3 and dropped == []
        pool.send(inbox.address, AbortTask("delivered"))
        assert received(pool, inbox, 1) == [AbortTask("delivered")]
        clock.now = 4.9
        pool.flush()
        assert dropped == []
        clock.now = 5.0
        pool.flush()
        assert dropped == [f"{nowhere} accepted nothing for 5.0s"] * 3 and pool.num_queued == 0
    finally:
        pool.close()
        inbox.close()


def test_messages_to_one_peer_keep_their_order_and_a_full_queue_drops_the_newest(nowhere):
    dropped = []
    pool = OutboxPool(max_queued=2)
    try:
        pool.send(nowhere, AbortTask("a"))
        pool.send(nowhere, AbortTask("b"))
        pool.send(nowhere, AbortTask("c"), dropped.append)
        assert dropped == [f"{nowhere} has 2 messages waiting already"] and pool.num_queued == 2
    finally:
        pool.close()
    inbox = Inbox("tcp://127.0.0.1:0")
    pool = OutboxPool()
    try:
        for i in range(20):
            pool.send(inbox.address, AbortTask(str(i)))
        assert [m.request_id for m in received(pool, inbox, 20)] == [str(i) for i in range(20)]
    finally:
        pool.close()
        inbox.close()


def test_an_address_that_cannot_be_connected_and_the_peer_bound_are_drops_not_errors(tmp_path):
    dropped = []
    pool = OutboxPool(max_peers=2)
    try:
        pool.send("not-an-address", AbortTask("x"), dropped.append)
        assert len(dropped) == 1 and "cannot connect to not-an-address" in dropped[0]
        for i in range(3):  # the third peer closes the first, whose queued message is dropped
            pool.send(f"ipc://{tmp_path}/peer-{i}", AbortTask(str(i)), dropped.append)
        assert dropped[1] == f"ipc://{tmp_path}/peer-0 was closed: more than 2 peers"
        assert pool.num_queued == 2
    finally:
        pool.close()
    with pytest.raises(ValueError, match="max_queued >= 1"):
        OutboxPool(max_queued=0)
