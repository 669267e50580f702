"""The one place that creates ZeroMQ sockets, so every socket gets the same limits and options.

Patterns (``reqrep``, ``channel``) build on these; components use the patterns, never raw sockets.
Every socket gets:

- ``MAXMSGSIZE``: a peer that sends a larger frame is disconnected by ZeroMQ before the frame is
  buffered, so a malformed or hostile peer cannot exhaust memory.
- high-water marks (messages queued per peer) for back-pressure;
- ZMTP heartbeats, so a peer that vanished without closing its connection is noticed;
- ``LINGER`` 0: closing never blocks on undeliverable messages.
- optionally a stall timeout (``TCP_MAXRT``, i.e. Linux ``TCP_USER_TIMEOUT``): a connection
  whose peer acknowledges nothing, or keeps its receive window shut, for that long is dropped, and
  with it every message queued to it. (ZMTP heartbeats cannot catch a peer that is connected but
  not reading: the PING waits behind the data.)
- connecting sockets set ``IMMEDIATE``: messages are queued only to completed connections, so a
  send to a peer that is not there is refused at once instead of piling up.
"""

from __future__ import annotations

from dataclasses import dataclass

import zmq

MiB = 1 << 20


@dataclass(frozen=True)
class SocketOptions:
    """Options applied to every socket. ``max_frame_bytes`` bounds one frame (ZeroMQ's
    ``MAXMSGSIZE``); ``hwm`` bounds messages queued per peer in each direction;
    ``stall_timeout_ms`` 0 keeps the OS default (minutes)."""

    max_frame_bytes: int = 256 * MiB
    hwm: int = 1000
    heartbeat_ivl_ms: int = 1000
    heartbeat_timeout_ms: int = 3000
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 250  # a restarted peer is found again within this
    stall_timeout_ms: int = 0

    def __post_init__(self) -> None:
        if self.max_frame_bytes <= 0:
            raise ValueError(f"max_frame_bytes must be positive, got {self.max_frame_bytes}")
        if self.hwm <= 0:
            raise ValueError(f"hwm must be positive (0 would mean unbounded queues), got {self.hwm}")
        if self.heartbeat_timeout_ms < self.heartbeat_ivl_ms:
            raise ValueError("heartbeat_timeout_ms must be at least heartbeat_ivl_ms")
        if self.stall_timeout_ms < 0:
            raise ValueError(f"stall_timeout_ms must be >= 0, got {self.stall_timeout_ms}")


def context() -> zmq.Context:
    """The process-wide ZeroMQ context (one I/O thread serves every socket)."""
    return zmq.Context.instance()


def _socket(kind: int, opts: SocketOptions) -> zmq.Socket:
    sock = context().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, opts.max_frame_bytes)
    sock.setsockopt(zmq.SNDHWM, opts.hwm)
    sock.setsockopt(zmq.RCVHWM, opts.hwm)
    sock.setsockopt(zmq.HEARTBEAT_IVL, opts.heartbeat_ivl_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, opts.heartbeat_timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, opts.heartbeat_timeout_ms)
    if opts.stall_timeout_ms:
        sock.setsockopt(zmq.TCP_MAXRT, opts.stall_timeout_ms)
    return sock


def _bind(sock: zmq.Socket, address: str) -> zmq.Socket:
    if address.endswith(":0"):  # ZeroMQ spells "any free port" as ":*"
        address = address[:-2] + ":*"
    try:
        sock.bind(address)
    except zmq.ZMQError as e:
        sock.close()
        raise ValueError(
            f"cannot bind {address}: {e} (is the port in use? tcp://HOST:0 picks a free one)"
        ) from e
    return sock


def _connect(sock: zmq.Socket, address: str, opts: SocketOptions) -> zmq.Socket:
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, opts.reconnect_ivl_ms)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, opts.reconnect_ivl_max_ms)
    try:
        sock.connect(address)
    except zmq.ZMQError as e:
        sock.close()
        raise ValueError(f"cannot connect to {address}: {e}") from e
    return sock


def bound_address(sock: zmq.Socket) -> str:
    """The address a socket is bound to, with a ``:0`` / ``:*`` port resolved."""
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def bind_router(address: str, opts: SocketOptions) -> zmq.Socket:
    """Server side of request/reply. Replies to a peer that is gone fail instead of vanishing."""
    sock = _socket(zmq.ROUTER, opts)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    return _bind(sock, address)


def connect_dealer(address: str, opts: SocketOptions) -> zmq.Socket:
    """Client side of request/reply: one connection to one server."""
    return _connect(_socket(zmq.DEALER, opts), address, opts)


def bind_pull(address: str, opts: SocketOptions) -> zmq.Socket:
    """Receiving end of a channel (an inbox); any number of senders connect to it."""
    return _bind(_socket(zmq.PULL, opts), address)


def connect_push(address: str, opts: SocketOptions) -> zmq.Socket:
    """Sending end of a channel (an outbox) to one inbox."""
    return _connect(_socket(zmq.PUSH, opts), address, opts)


def monitor_disconnects(sock: zmq.Socket) -> zmq.Socket:
    """A PAIR socket that receives an event each time ``sock`` loses a connection."""
    return sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
