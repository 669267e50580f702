"""Mailboxes: typed messages from many senders into one bound PULL socket, any kind, in arrival order.

The serving path (router ⇄ workers) is asynchronous in both directions: a router sends tasks to
workers and receives events about many requests from many workers at once. An ``Inbox`` is where a
process receives; an ``Outbox`` sends to one peer's inbox. Back-pressure is ZeroMQ's: ``send``
waits while the peer's queue is full and raises ``PeerTimeout`` if it stays full for ``timeout_s``.
A receiver never blocks on a bad message: undecodable frames are logged and dropped.
"""

from __future__ import annotations

import logging

import zmq

from transfer import sockets
from transfer.errors import PeerTimeout, WireError
from transfer.messages import Message
from transfer.sockets import SocketOptions
from transfer.wire import decode, encode

log = logging.getLogger(__name__)


class Inbox:
    """Binds ``address`` (``tcp://127.0.0.1:0`` picks a free port; see ``address``). Not thread-safe."""

    def __init__(self, address: str, *, opts: SocketOptions | None = None) -> None:
        self._sock = sockets.bind_pull(address, opts or SocketOptions())
        self.address = sockets.bound_address(self._sock)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)

    def recv(self, timeout_s: float) -> Message | None:
        """The next message, or None if none arrives within ``timeout_s``."""
        while self._poller.poll(max(0, int(timeout_s * 1000))):
            frames = self._sock.recv_multipart(copy=False)
            try:
                return decode(frames).message
            except WireError as e:
                log.error("inbox %s dropped an undecodable message: %s", self.address, e)
                timeout_s = 0
        return None

    def close(self) -> None:
        self._sock.close()


class Outbox:
    """Connects to one peer's inbox. Not thread-safe."""

    def __init__(self, address: str, *, timeout_s: float = 5.0, opts: SocketOptions | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.address = address
        self.timeout_s = timeout_s
        self._sock = sockets.connect_push(address, opts or SocketOptions())
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLOUT)

    def send(self, message: Message) -> None:
        """Queue ``message`` (buffers zero-copy: keep them unmodified until the peer has them)."""
        if not self._poller.poll(int(self.timeout_s * 1000)):
            raise PeerTimeout(f"{self.address} accepted nothing for {self.timeout_s}s")
        self._sock.send_multipart(encode(message), copy=False)

    def close(self) -> None:
        self._sock.close()


class OutboxPool:
    """One ``Outbox`` per peer address, opened on first use. Not thread-safe."""

    def __init__(self, *, timeout_s: float = 5.0, opts: SocketOptions | None = None) -> None:
        self.timeout_s = timeout_s
        self._opts = opts
        self._boxes: dict[str, Outbox] = {}

    def send(self, address: str, message: Message) -> None:
        """Send to ``address``; ``PeerTimeout`` if that peer accepts nothing for ``timeout_s``."""
        box = self._boxes.get(address)
        if box is None:
            box = self._boxes[address] = Outbox(address, timeout_s=self.timeout_s, opts=self._opts)
        box.send(message)

    def close(self) -> None:
        for box in self._boxes.values():
            box.close()
        self._boxes.clear()
