"""Mailboxes: typed messages from many senders into one bound PULL socket, any kind, in arrival order.

The serving path (router ⇄ workers) is asynchronous in both directions: a router sends tasks to
workers and receives events about many requests from many workers at once. An ``Inbox`` is where a
process receives; an ``Outbox`` sends to one peer's inbox. Back-pressure is ZeroMQ's: ``send``
waits while the peer's queue is full and raises ``PeerTimeout`` if it stays full for ``timeout_s``.
An ``OutboxPool`` never waits: what a peer cannot take now waits in that peer's queue.
A receiver never blocks on a bad message: undecodable frames are logged and dropped; a message
whose bytes fail their checksums is handed over as ``Damaged``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from transfer import sockets
from transfer.errors import CorruptBuffer, PeerTimeout, WireError
from transfer.messages import Message
from transfer.sockets import SocketOptions
from transfer.wire import decode, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Damaged:
    """A message that arrived whole but with bytes that do not match their checksums: ``message``
    as decoded, whose buffers must not be used, and ``problem``, what did not match."""

    message: Message
    problem: str


class Inbox:
    """Binds ``address`` (``tcp://127.0.0.1:0`` picks a free port; see ``address``). Not thread-safe."""

    def __init__(self, address: str, *, opts: SocketOptions | None = None) -> None:
        self._sock = sockets.bind_pull(address, opts or SocketOptions())
        self.address = sockets.bound_address(self._sock)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)

    def recv(self, timeout_s: float) -> Message | Damaged | None:
        """The next message, or None if none arrives within ``timeout_s``. A message whose buffers
        do not match their checksums comes as ``Damaged``, so the receiver can fail its request."""
        while self._poller.poll(max(0, int(timeout_s * 1000))):
            frames = self._sock.recv_multipart(copy=False)
            try:
                return decode(frames).message
            except CorruptBuffer as e:
                log.error("inbox %s received a %s with corrupt bytes: %s", self.address, e.message.KIND, e)
                return Damaged(e.message, str(e))
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
        if not self.try_send(message, self.timeout_s):
            raise PeerTimeout(f"{self.address} accepted nothing for {self.timeout_s}s")

    def try_send(self, message: Message, wait_s: float = 0.0) -> bool:
        """``send`` if the peer takes it within ``wait_s``; False (nothing sent) if it does not."""
        if not self._poller.poll(int(wait_s * 1000)):
            return False
        self._sock.send_multipart(encode(message), copy=False)
        return True

    def close(self) -> None:
        self._sock.close()


class OutboxPool:
    """One ``Outbox`` per peer, opened on first use, for a process that answers whatever address a
    message names (a worker: ``reply_to``, ``decode_address``). Sends never wait: a peer that is
    slow, gone or was never there costs the others nothing. Not thread-safe.

    A message a peer cannot take at once waits in that peer's queue, in order, and ``flush()`` (the
    owner's loop calls it every turn) sends what the peer takes now. A message that waited
    ``timeout_s``, or found its peer's queue full (``max_queued``), or names an address that cannot
    be connected to, is dropped, and its ``on_drop(reason)`` called. At most ``max_peers`` peers are
    kept; the one used least recently goes first (its queue dropped).
    """

    def __init__(
        self, *, timeout_s: float = 5.0, max_queued: int = 1000, max_peers: int = 256,
        opts: SocketOptions | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        if timeout_s <= 0 or max_queued < 1 or max_peers < 1:
            raise ValueError(
                f"need timeout_s > 0, max_queued >= 1, max_peers >= 1; got {timeout_s}, {max_queued}, {max_peers}"
            )
        self.timeout_s = timeout_s
        self.max_queued = max_queued
        self.max_peers = max_peers
        self._opts = opts
        self._clock = clock
        self._peers: OrderedDict[str, _QueuedPeer] = OrderedDict()

    @property
    def num_queued(self) -> int:
        return sum(len(p.queue) for p in self._peers.values())

    def send(self, address: str, message: Message, on_drop: OnDrop | None = None) -> None:
        """Send ``message`` now if ``address`` takes it, else queue it (see the class)."""
        drop = on_drop or _log_drop(address, message)
        peer = self._peers.get(address)
        if peer is None:
            try:
                peer = self._open(address)
            except ValueError as e:
                drop(str(e))
                return
        self._peers.move_to_end(address)
        if not peer.queue and peer.box.try_send(message):
            return
        if len(peer.queue) >= self.max_queued:
            drop(f"{address} has {len(peer.queue)} messages waiting already")
            return
        peer.queue.append((self._clock() + self.timeout_s, message, drop))

    def flush(self) -> int:
        """Send what the peers take now; drop what waited too long. Returns how many still wait."""
        now, waiting = self._clock(), 0
        # a drop callback may send (a failure to the router): over a copy, skipping a peer closed meanwhile
        for address, peer in list(self._peers.items()):
            if self._peers.get(address) is not peer:
                continue
            queue = peer.queue
            while queue and peer.box.try_send(queue[0][1]):
                queue.popleft()
            while queue and queue[0][0] <= now:
                _, _, drop = queue.popleft()
                drop(f"{address} accepted nothing for {self.timeout_s}s")
            waiting += len(queue)
        return waiting

    def _open(self, address: str) -> _QueuedPeer:
        while len(self._peers) >= self.max_peers:
            old_address, old = self._peers.popitem(last=False)
            for _, _, drop in old.queue:
                drop(f"{old_address} was closed: more than {self.max_peers} peers")
            old.box.close()
        peer = self._peers[address] = _QueuedPeer(Outbox(address, timeout_s=self.timeout_s, opts=self._opts))
        return peer

    def close(self) -> None:
        for peer in self._peers.values():
            peer.box.close()
        self._peers.clear()


OnDrop = Callable[[str], None]


@dataclass
class _QueuedPeer:
    box: Outbox
    queue: deque[tuple[float, Message, OnDrop]] = field(default_factory=deque)


def _log_drop(address: str, message: Message) -> OnDrop:
    def drop(reason: str) -> None:
        log.error("dropped a %s for %s: %s", message.KIND, address, reason)

    return drop
