"""Streams over real sockets: ordering, end and abort, back-pressure, and a sender that dies."""

from __future__ import annotations

import os
import signal

import pytest

from transfer import (
    Buffer,
    PeerTimeout,
    SocketOptions,
    StreamAborted,
    StreamReceiver,
    StreamSender,
    WireError,
)
from transfer import sockets as zsockets
from transfer.messages import ExistsRequest, GetReply, StreamEnd
from transfer.wire import encode


@pytest.fixture
def receiver():
    r = StreamReceiver("tcp://127.0.0.1:0", timeout_s=5)
    yield r
    r.close()


@pytest.fixture
def sender_to():
    senders = []

    def connect(address: str, **kwargs) -> StreamSender:
        senders.append(StreamSender(address, **kwargs))
        return senders[-1]

    yield connect
    for s in senders:
        s.close()


def item(i: int, nbytes: int = 16) -> GetReply:
    return GetReply((True,), (Buffer.raw(bytes([i % 256]) * nbytes),))


def test_interleaved_streams_arrive_in_order_and_end(receiver, sender_to):
    sender = sender_to(receiver.address)
    for i in range(5):
        sender.send(1, item(i))
        sender.send(2, item(100 + i))
    sender.end(2)
    sender.end(1)
    got_2 = [bytes(m.buffers[0].data)[0] for m in receiver.iter(2)]
    got_1 = [bytes(m.buffers[0].data)[0] for m in receiver.iter(1)]
    assert got_1 == [0, 1, 2, 3, 4] and got_2 == [100, 101, 102, 103, 104]


def test_abort_reaches_the_receiver_with_its_reason(receiver, sender_to):
    sender = sender_to(receiver.address)
    sender.send(7, item(1))
    sender.abort(7, "prefill failed: out of pages")
    assert receiver.recv(7) is not None
    with pytest.raises(StreamAborted, match="stream 7 aborted by sender: prefill failed: out of pages"):
        receiver.recv(7)
    with pytest.raises(ValueError, match="end\\(\\) or abort\\(\\)"):
        sender.send(8, StreamEnd(0))


def test_lost_items_and_wrong_counts_are_detected(receiver):
    raw = zsockets.connect_push(receiver.address, SocketOptions())
    try:
        raw.send_multipart(encode(item(0), msg_id=3, seq=0))
        raw.send_multipart(encode(item(2), msg_id=3, seq=2))
        assert receiver.recv(3) is not None
        with pytest.raises(WireError, match="stream 3: expected item 1, got item 2: items lost"):
            receiver.recv(3)
        raw.send_multipart(encode(StreamEnd(5), msg_id=4, seq=0))
        with pytest.raises(WireError, match="stream 4: sender sent 5 items, got 0"):
            receiver.recv(4)
        raw.send_multipart(encode(ExistsRequest((b"k",)), msg_id=5, seq=0)[:1] + [b"junk"])
        with pytest.raises(WireError, match="frame count mismatch"):
            receiver.recv(5)  # a malformed item is reported to the stream it belongs to
    finally:
        raw.close()


def test_back_pressure_bounds_what_a_stalled_receiver_queues(sender_to):
    opts = SocketOptions(hwm=1)
    stalled = StreamReceiver("tcp://127.0.0.1:0", opts=opts)  # bound, never read
    try:
        sender = sender_to(stalled.address, timeout_s=0.3, opts=opts)
        with pytest.raises(PeerTimeout, match="accepted nothing for 0.3 s"):
            for i in range(1000):  # 1000 MiB if nothing pushed back
                sender.send(1, item(i, nbytes=1 << 20))
        assert i < 100, f"sent {i} MiB before back-pressure"
    finally:
        stalled.close()


def test_no_receiver_is_a_timeout_not_a_hang(sender_to):
    sender = sender_to("tcp://127.0.0.1:1", timeout_s=0.2)
    with pytest.raises(PeerTimeout):
        sender.send(1, item(0))


def test_sender_dying_mid_stream_surfaces_within_the_timeout(receiver, spawn_peer):
    peer = spawn_peer("stream-then-hang", receiver.address, "3")
    assert peer.stdout.readline().strip() == "sent"
    received = [receiver.recv(1, timeout_s=5) for _ in range(3)]
    assert [bytes(m.buffers[0].data)[0] for m in received] == [0, 1, 2]
    os.kill(peer.pid, signal.SIGKILL)
    with pytest.raises(PeerTimeout, match="stream 1: no item within 0.5 s"):
        receiver.recv(1, timeout_s=0.5)


def test_discarded_streams_stop_buffering(receiver, sender_to):
    sender = sender_to(receiver.address)
    receiver.discard(9)
    sender.send(9, item(0))
    sender.send(10, item(1))
    sender.end(10)
    assert len(list(receiver.iter(10))) == 1
    with pytest.raises(PeerTimeout):
        receiver.recv(9, timeout_s=0.1)
