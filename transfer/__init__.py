"""ZeroMQ wire format and socket patterns (knows nothing about models).

- ``messages``: every message kind, as typed frozen structs (the protocol in one file).
- ``wire``: message ⇄ frames (MessagePack header + zero-copy buffer frames), validating decode.
- ``sockets``: the one module that creates sockets, with size limits and high-water marks.
- ``reqrep``: request/reply with ids and timeouts; ``channel``: one-way typed inboxes and outboxes.
- ``shared_memory``: a region one process shares with others on its host (a store node's arena).
- ``errors``: what can go wrong, one class per thing a caller can act on.
"""

from __future__ import annotations

from transfer.errors import (
    PeerTimeout,
    PeerUnavailable,
    RemoteError,
    TransferError,
    WireError,
)
from transfer.messages import Buffer, Message
from transfer.reqrep import Incoming, ReplyServer, RequestClient
from transfer.sockets import SocketOptions

__all__ = [
    "Buffer",
    "Incoming",
    "Message",
    "PeerTimeout",
    "PeerUnavailable",
    "RemoteError",
    "ReplyServer",
    "RequestClient",
    "SocketOptions",
    "TransferError",
    "WireError",
]
