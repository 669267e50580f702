"""Request/reply over ROUTER (server) and DEALER (client), with request ids and timeouts.

A client may have several requests outstanding (``submit`` then ``wait``), e.g. to fan a batch
out over several servers; replies are matched by id, and a reply that arrives after its request
timed out is dropped. A dead server surfaces as ``PeerUnavailable`` (not reachable within the
connect timeout, or disconnected while a reply was outstanding) or ``PeerTimeout``: never a hang.

The server answers a request it cannot decode with ``ErrorReply(BAD_REQUEST, <what was wrong>)``
itself and keeps serving; it never blocks on a slow or vanished client (that reply is dropped and
the client's own timeout reports it).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

from transfer import sockets
from transfer.errors import CorruptBuffer, PeerTimeout, PeerUnavailable, RemoteError, WireError
from transfer.messages import BAD_REQUEST, ErrorReply, Message
from transfer.sockets import SocketOptions
from transfer.wire import decode, encode

log = logging.getLogger(__name__)
_SENT = zmq.MessageTracker()  # tracks nothing, so it is always done


class RequestClient:
    """One connection to one server. Not thread-safe: use one per thread or guard it with a lock."""

    def __init__(
        self, address: str, *, opts: SocketOptions | None = None, connect_timeout_s: float = 1.0
    ) -> None:
        if connect_timeout_s <= 0:
            raise ValueError(f"connect_timeout_s must be positive, got {connect_timeout_s}")
        self.address = address
        self.connect_timeout_s = connect_timeout_s
        self._sock = sockets.connect_dealer(address, opts or SocketOptions())
        self._monitor = sockets.monitor_disconnects(self._sock)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._ids = itertools.count(1)
        self._outstanding: set[int] = set()
        self._replies: dict[int, Message] = {}
        self._lost: set[int] = set()  # outstanding when the connection dropped

    def request(self, message: Message, timeout_s: float) -> Message:
        """Send ``message`` and return its reply (see ``wait`` for what may be raised)."""
        return self.wait(self.submit(message), timeout_s)

    def submit(self, message: Message) -> int:
        """Send ``message`` without waiting for the reply; returns the id to ``wait`` on.

        Raises ``PeerUnavailable`` if no connection to the server exists within the connect timeout.
        """
        self._drain_disconnects()  # a connection lost before this request does not concern it
        if not self._sock.poll(int(self.connect_timeout_s * 1000), zmq.POLLOUT):
            raise PeerUnavailable(f"no connection to {self.address} within {self.connect_timeout_s:g} s")
        msg_id = next(self._ids)
        try:
            self._sock.send_multipart(encode(message, msg_id=msg_id), copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            raise PeerUnavailable(f"connection to {self.address} dropped while sending") from None
        self._outstanding.add(msg_id)
        return msg_id

    def wait(self, msg_id: int, timeout_s: float) -> Message:
        """The reply to request ``msg_id``, waiting at most ``timeout_s``.

        Raises ``RemoteError`` if the server answered with an error, ``PeerUnavailable`` if the
        connection dropped while the reply was outstanding, ``PeerTimeout`` if nothing came in
        time, ``WireError`` if the reply could not be decoded (``CorruptBuffer``: its bytes do not
        match their checksum).
        """
        if msg_id not in self._outstanding:
            raise ValueError(f"request {msg_id} is not outstanding (never submitted, or already waited on)")
        deadline = time.monotonic() + timeout_s
        try:
            while msg_id not in self._replies:
                if msg_id in self._lost:
                    raise PeerUnavailable(f"{self.address} disconnected before replying to request {msg_id}")
                remaining_ms = (deadline - time.monotonic()) * 1000
                if remaining_ms <= 0:
                    raise PeerTimeout(f"no reply from {self.address} within {timeout_s:g} s")
                events = dict(self._poller.poll(max(1, int(remaining_ms))))
                if self._monitor in events:
                    self._drain_disconnects()
                if self._sock in events:
                    self._receive()
        finally:
            self._outstanding.discard(msg_id)
            self._lost.discard(msg_id)
        reply = self._replies.pop(msg_id)
        if isinstance(reply, CorruptBuffer):
            raise reply
        if isinstance(reply, ErrorReply):
            raise RemoteError(reply.code, reply.message)
        return reply

    def cancel(self, msg_id: int) -> None:
        """Stop waiting for request ``msg_id``: its reply, if one still comes, is dropped."""
        self._outstanding.discard(msg_id)
        self._replies.pop(msg_id, None)
        self._lost.discard(msg_id)

    def _receive(self) -> None:
        while self._sock.poll(0, zmq.POLLIN):
            try:
                envelope = decode(self._sock.recv_multipart(copy=False))
            except CorruptBuffer as e:  # the answer to e.msg_id: raised to whoever waits on that one
                if e.msg_id in self._outstanding:
                    self._replies[e.msg_id] = e
                continue
            if envelope.msg_id in self._outstanding:
                self._replies[envelope.msg_id] = envelope.message
            else:
                log.debug("dropping reply to request %s from %s (timed out)", envelope.msg_id, self.address)

    def _drain_disconnects(self) -> None:
        while self._monitor.poll(0, zmq.POLLIN):
            recv_monitor_message(self._monitor)
            self._lost |= self._outstanding - set(self._replies)

    def close(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close()
        self._sock.close()


@dataclass(frozen=True)
class Incoming:
    """A decoded request and who sent it (``peer`` is the ROUTER identity to reply to)."""

    peer: bytes
    msg_id: int | None
    message: Message


class ReplyServer:
    """A bound ROUTER socket serving requests one at a time. ``verify_buffers=False``: requests'
    buffers are not checked against their checksums here (see ``wire.decode``)."""

    def __init__(
        self, address: str, *, opts: SocketOptions | None = None, verify_buffers: bool = True
    ) -> None:
        self._sock = sockets.bind_router(address, opts or SocketOptions())
        self._verify = verify_buffers
        self.address = sockets.bound_address(self._sock)

    @property
    def socket(self) -> zmq.Socket:
        """The bound socket, for a caller's poller only: read requests through ``recv``."""
        return self._sock

    def recv(self, timeout_s: float) -> Incoming | None:
        """The next valid request, or None if none arrived within ``timeout_s``.

        A request that cannot be decoded is answered with ``ErrorReply(BAD_REQUEST, ...)`` here,
        logged, and also yields None, so the caller simply polls again.
        """
        if not self._sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            return None
        frames = self._sock.recv_multipart(copy=False)
        peer = frames[0].bytes
        try:
            envelope = decode(frames[1:], verify=self._verify)
        except WireError as e:
            log.warning("bad request from peer %s: %s", peer.hex(), e)
            self._send(peer, ErrorReply(BAD_REQUEST, str(e)), e.msg_id)
            return None
        return Incoming(peer, envelope.msg_id, envelope.message)

    def reply(self, request: Incoming, message: Message) -> zmq.MessageTracker | None:
        """Send ``message`` as the reply to ``request`` without blocking.

        Buffers in ``message`` are sent zero-copy: they must stay unmodified until the returned
        tracker is ``done``. Returns None if the reply was dropped because the client is gone or
        not reading (its queue is full); the client's timeout reports that on its side.
        """
        return self._send(request.peer, message, request.msg_id)

    def _send(self, peer: bytes, message: Message, msg_id: int | None) -> zmq.MessageTracker | None:
        frames = [peer, *encode(message, msg_id=msg_id)]
        try:
            if not getattr(message, "buffers", ()):  # only buffers are shared: nothing to track
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK)
                return _SENT
            return self._sock.send_multipart(frames, copy=False, track=True, flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("dropping %s reply to peer %s: its queue is full", message.KIND, peer.hex())
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            log.info("dropping %s reply: peer %s disconnected", message.KIND, peer.hex())
        return None

    def close(self) -> None:
        self._sock.close()
