"""Failures on the wire, one class per thing the caller can act on.

``TransferError`` is the base. A caller that only wants "the peer did not give me what I asked
for" catches it; one that reacts differently to a dead peer and a refusal catches the subclasses.
"""

from __future__ import annotations


class TransferError(RuntimeError):
    """Base class of every failure raised by ``transfer``."""


class WireError(TransferError, ValueError):
    """A message could not be decoded: malformed header, unknown kind, wrong version, missing or
    unexpected fields, a field of the wrong type, or buffer frames that do not match the header.

    ``msg_id`` is the request id when the header was readable far enough to find it, so that the
    error can still be answered to the right request.
    """

    def __init__(self, problem: str, msg_id: int | None = None) -> None:
        super().__init__(problem)
        self.msg_id = msg_id


class CorruptBuffer(WireError):
    """A message whose header decoded but one of its buffers does not match the checksum its
    producer computed: bytes changed in transit or at rest. ``message`` is the message as decoded
    (its buffers must not be used), so the receiver can fail the request it belongs to."""

    def __init__(self, problem: str, msg_id: int | None, message: object) -> None:
        super().__init__(problem, msg_id)
        self.message = message


class PeerUnavailable(TransferError):
    """No live connection to the peer: it could not be reached within the connect timeout, or it
    disconnected while a reply was outstanding."""


class PeerTimeout(TransferError, TimeoutError):
    """The peer is connected but sent nothing within the timeout (stalled, overloaded or dead)."""


class RemoteError(TransferError):
    """The peer received the request and answered with an error reply."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"peer replied {code}: {detail}")
        self.code = code
        self.detail = detail
