"""Streams of typed messages (layer-by-layer KV, token ids) over PUSH → PULL, with back-pressure.

Many streams share one connection; each item carries its stream id and a sequence number, and a
stream finishes with ``StreamEnd`` (carrying the item count) or ``StreamAbort``. Back-pressure is
ZeroMQ's: once the high-water marks and socket buffers are full, ``StreamSender.send`` waits, and
raises ``PeerTimeout`` if the receiver accepts nothing for ``timeout_s``. On the other side,
``StreamReceiver.recv`` raises ``PeerTimeout`` if no item of the stream arrives for ``timeout_s``:
a sender that dies mid-stream is reported within the timeout, never as a hang.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Iterator

import zmq

from transfer import sockets
from transfer.errors import PeerTimeout, StreamAborted, WireError
from transfer.messages import Message, StreamAbort, StreamEnd
from transfer.sockets import SocketOptions
from transfer.wire import Envelope, decode, encode

log = logging.getLogger(__name__)


class StreamSender:
    """Sends streams to one receiver. Not thread-safe."""

    def __init__(self, address: str, *, timeout_s: float = 5.0, opts: SocketOptions | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.address = address
        self.timeout_s = timeout_s
        self._sock = sockets.connect_push(address, opts or SocketOptions())
        self._num_sent: dict[int, int] = {}

    def send(self, stream_id: int, message: Message) -> zmq.MessageTracker:
        """Queue the next item of ``stream_id``. Its buffers are sent zero-copy: keep them
        unmodified until the returned tracker is ``done``. Raises ``PeerTimeout`` if the receiver
        accepts nothing for ``timeout_s`` (back-pressure that never eases, or no receiver)."""
        if isinstance(message, (StreamEnd, StreamAbort)):
            raise ValueError("finish a stream with end() or abort(), not send()")
        return self._send(stream_id, message)

    def end(self, stream_id: int) -> None:
        """Finish ``stream_id``; the receiver checks that it got every item."""
        self._send(stream_id, StreamEnd(self._num_sent.get(stream_id, 0)))
        del self._num_sent[stream_id]

    def abort(self, stream_id: int, reason: str) -> None:
        """Give up on ``stream_id``; the receiver raises ``StreamAborted(reason)``."""
        self._send(stream_id, StreamAbort(reason))
        self._num_sent.pop(stream_id, None)

    def _send(self, stream_id: int, message: Message) -> zmq.MessageTracker:
        seq = self._num_sent.get(stream_id, 0)
        frames = encode(message, msg_id=stream_id, seq=seq)
        if not self._sock.poll(int(self.timeout_s * 1000), zmq.POLLOUT):
            raise PeerTimeout(
                f"stream {stream_id}: receiver at {self.address} accepted nothing for {self.timeout_s:g} s "
                "(not reading, gone, or never there)"
            )
        tracker = self._sock.send_multipart(frames, copy=False, track=True, flags=zmq.NOBLOCK)
        self._num_sent[stream_id] = seq + 1
        return tracker

    def close(self) -> None:
        self._sock.close()


class StreamReceiver:
    """Receives streams from any number of senders on one bound address. Not thread-safe.

    Items of streams other than the one being read are buffered until read: read (or ``discard``)
    every stream you accept, or they accumulate.
    """

    def __init__(self, address: str, *, timeout_s: float = 5.0, opts: SocketOptions | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.timeout_s = timeout_s
        self._sock = sockets.bind_pull(address, opts or SocketOptions())
        self.address = sockets.bound_address(self._sock)
        self._pending: defaultdict[int, deque[Envelope]] = defaultdict(deque)
        self._num_read: dict[int, int] = {}
        self._errors: dict[int, WireError] = {}
        self._discarded: set[int] = set()

    def recv(self, stream_id: int, timeout_s: float | None = None) -> Message | None:
        """The next item of ``stream_id``, or None once the stream has ended.

        Raises ``StreamAborted`` if the sender aborted, ``PeerTimeout`` if no item came within
        ``timeout_s`` (default: the receiver's), ``WireError`` if an item was malformed or lost.
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while not self._pending.get(stream_id):
            if stream_id in self._errors:
                self._forget(stream_id)
                raise self._errors.pop(stream_id)
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0 or not self._sock.poll(max(1, int(remaining_ms)), zmq.POLLIN):
                raise PeerTimeout(
                    f"stream {stream_id}: no item within {timeout_s:g} s (sender dead or stalled)"
                )
            self._receive_one()
        return self._take(stream_id)

    def iter(self, stream_id: int, timeout_s: float | None = None) -> Iterator[Message]:
        """Every item of ``stream_id`` until its end (raises as ``recv`` does)."""
        while (message := self.recv(stream_id, timeout_s)) is not None:
            yield message

    def discard(self, stream_id: int) -> None:
        """Drop what is buffered for ``stream_id`` and everything that still arrives for it."""
        self._forget(stream_id)
        self._discarded.add(stream_id)

    def _take(self, stream_id: int) -> Message | None:
        envelope = self._pending[stream_id].popleft()
        expected = self._num_read.get(stream_id, 0)
        if envelope.seq != expected:
            self._forget(stream_id)
            raise WireError(
                f"stream {stream_id}: expected item {expected}, got item {envelope.seq}: items lost"
            )
        message = envelope.message
        if isinstance(message, StreamAbort):
            self._forget(stream_id)
            raise StreamAborted(stream_id, message.reason)
        if isinstance(message, StreamEnd):
            self._forget(stream_id)
            if message.num_items != expected:
                raise WireError(f"stream {stream_id}: sender sent {message.num_items} items, got {expected}")
            return None
        self._num_read[stream_id] = expected + 1
        return message

    def _receive_one(self) -> None:
        frames = self._sock.recv_multipart(copy=False)
        try:
            envelope = decode(frames)
        except WireError as e:
            if e.msg_id is None:
                # Unattributable; the stream it belonged to reports the gap in its sequence.
                log.error("dropping undecodable stream item: %s", e)
            elif e.msg_id not in self._discarded:
                self._errors[e.msg_id] = e
            return
        if envelope.msg_id is None or envelope.seq is None:
            log.error(
                "dropping %s: not a stream item (no stream id or sequence number)", envelope.message.KIND
            )
        elif envelope.msg_id not in self._discarded:
            self._pending[envelope.msg_id].append(envelope)

    def _forget(self, stream_id: int) -> None:
        self._pending.pop(stream_id, None)
        self._num_read.pop(stream_id, None)

    def close(self) -> None:
        self._sock.close()
