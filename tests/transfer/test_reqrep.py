"""Request/reply over real sockets: ids, timeouts, dead peers, malformed input, size limits."""

from __future__ import annotations

import os
import signal

import pytest
import zmq

from transfer import (
    Buffer,
    PeerTimeout,
    PeerUnavailable,
    RemoteError,
    RequestClient,
    SocketOptions,
)
from transfer import sockets as zsockets
from transfer.messages import ErrorReply, GetReply, GetRequest, PutRequest, StatsReply, StatsRequest
from transfer.wire import decode, encode


@pytest.fixture
def client_for():
    clients = []

    def connect(address: str, **kwargs) -> RequestClient:
        clients.append(RequestClient(address, **kwargs))
        return clients[-1]

    yield connect
    for c in clients:
        c.close()


def test_request_reply_and_several_outstanding(serve, client_for):
    client = client_for(serve().address)
    assert isinstance(client.request(StatsRequest(), timeout_s=5), StatsReply)
    first = client.submit(GetRequest((b"a",)))
    second = client.submit(GetRequest((b"b", b"c")))
    reply_b = client.wait(second, timeout_s=5)  # replies are matched by id, whatever the order
    reply_a = client.wait(first, timeout_s=5)
    assert [bytes(b.data) for b in reply_a.buffers] == [b"a"]
    assert [bytes(b.data) for b in reply_b.buffers] == [b"b", b"c"]
    with pytest.raises(ValueError, match="not outstanding"):
        client.wait(first, timeout_s=1)


def test_unanswered_request_times_out_and_its_late_reply_is_dropped(serve, client_for):
    client = client_for(serve().address)
    with pytest.raises(PeerTimeout, match="no reply from tcp://127.0.0.1:\\d+ within 0.1 s"):
        client.request(GetRequest((b"slow",)), timeout_s=0.1)
    reply = client.request(GetRequest((b"fast",)), timeout_s=5)  # not the late reply to b"slow"
    assert isinstance(reply, GetReply) and bytes(reply.buffers[0].data) == b"fast"


def test_no_server_is_reported_within_the_connect_timeout(client_for):
    client = client_for("tcp://127.0.0.1:1", connect_timeout_s=0.2)
    with pytest.raises(PeerUnavailable, match="no connection to tcp://127.0.0.1:1 within 0.2 s"):
        client.request(StatsRequest(), timeout_s=5)


def test_server_killed_mid_request_is_reported_as_a_disconnect_not_a_hang(spawn_peer, client_for):
    peer = spawn_peer("silent-server")
    client = client_for(peer.stdout.readline().strip())
    msg_id = client.submit(StatsRequest())
    os.kill(peer.pid, signal.SIGKILL)
    with pytest.raises(PeerUnavailable, match="disconnected before replying"):
        client.wait(msg_id, timeout_s=30)


def test_malformed_requests_get_an_error_reply_and_the_server_keeps_serving(serve, client_for):
    server = serve()
    raw = zsockets.connect_dealer(server.address, SocketOptions())
    try:
        raw.send_multipart([b"\xc1 not msgpack"])
        reply = decode(raw.recv_multipart())
        assert isinstance(reply.message, ErrorReply) and reply.message.code == "bad_request"
        assert "not valid MessagePack" in reply.message.message

        frames = encode(PutRequest((b"k",), (Buffer.raw(b"v"),)), msg_id=42)
        raw.send_multipart(frames[:1])  # the buffer frame is missing
        reply = decode(raw.recv_multipart())
        assert reply.msg_id == 42 and "frame count mismatch" in reply.message.message
    finally:
        raw.close()
    assert isinstance(client_for(server.address).request(StatsRequest(), timeout_s=5), StatsReply)


def test_remote_errors_are_raised_with_their_code(serve, client_for):
    server = serve(handler=lambda request: ErrorReply("unavailable", "index down"))
    with pytest.raises(RemoteError, match="peer replied unavailable: index down") as err:
        client_for(server.address).request(StatsRequest(), timeout_s=5)
    assert err.value.code == "unavailable"


def test_a_frame_over_the_size_limit_disconnects_its_sender_only(serve, client_for):
    server = serve(opts=SocketOptions(max_frame_bytes=1 << 20))
    hostile = client_for(server.address)
    msg_id = hostile.submit(PutRequest((b"k",), (Buffer.raw(bytes(2 << 20)),)))
    with pytest.raises(PeerUnavailable, match="disconnected"):
        hostile.wait(msg_id, timeout_s=30)
    assert server.num_served == 0  # the oversized request never reached the handler
    assert isinstance(client_for(server.address).request(StatsRequest(), timeout_s=5), StatsReply)


def test_sockets_get_the_limits_and_bad_options_are_refused():
    sock = zsockets.bind_router("tcp://127.0.0.1:0", SocketOptions(max_frame_bytes=12345, hwm=7))
    try:
        assert zsockets.bound_address(sock).startswith("tcp://127.0.0.1:")
        assert sock.getsockopt(zmq.MAXMSGSIZE) == 12345
        assert (sock.getsockopt(zmq.SNDHWM), sock.getsockopt(zmq.RCVHWM)) == (7, 7)
    finally:
        sock.close()
    with pytest.raises(ValueError, match="unbounded"):
        SocketOptions(hwm=0)
    with pytest.raises(ValueError, match="cannot bind tcp://256.0.0.1:1"):
        zsockets.bind_router("tcp://256.0.0.1:1", SocketOptions())
