"""Message authentication: with a cluster key, every header frame carries a MAC of itself.

A process that has a key (``TANDEM_CLUSTER_KEY``, hex, read at start; or ``set_key``) seals every
header it sends, ``MAGIC + HMAC-SHA256(key, header)[:16] + header``, and refuses every header that
is not sealed with the same key (``WireError``: the receiver drops it, as any undecodable message).
A process without a key sends and accepts plain headers. ``tandem up`` draws a key at start and
hands it to every process it starts, so that nobody else on the host can send the cluster a
message.

The MAC covers the header: the message kind, every field (request ids, token ids, sampling,
reply addresses) and each buffer's dtype and shape; not the bytes of the KV buffers, which only a
peer already inside the connection could alter (their integrity is the KV transfer's concern).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from transfer.errors import WireError

ENV = "TANDEM_CLUSTER_KEY"
MAGIC = b"TMAC1"
MAC_BYTES = 16

_key: bytes | None = None


def set_key(key: bytes | None) -> None:
    """Seal and require sealed headers with ``key`` from now on (None: plain headers)."""
    global _key
    if key is not None and len(key) < 16:
        raise ValueError(f"a cluster key needs at least 16 bytes, got {len(key)}")
    _key = key


def key_from_env() -> bytes | None:
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(
            f"{ENV} must be hex (e.g. from `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        ) from None


def _mac(key: bytes, header: bytes | memoryview) -> bytes:
    return hmac.new(key, header, hashlib.sha256).digest()[:MAC_BYTES]


def seal(header: bytes) -> bytes:
    """The header frame to send."""
    return header if _key is None else MAGIC + _mac(_key, header) + header


def unseal(frame: memoryview) -> memoryview:
    """The header inside a received frame; ``WireError`` if it is not sealed as this process requires."""
    sealed = bytes(frame[: len(MAGIC)]) == MAGIC
    if _key is None:
        if sealed:
            raise WireError(f"a sealed message, but this process has no cluster key ({ENV})")
        return frame
    if not sealed:
        raise WireError(
            "an unauthenticated message: the cluster requires a MAC (wrong or missing cluster key)"
        )
    start = len(MAGIC) + MAC_BYTES
    header = frame[start:]
    if not hmac.compare_digest(bytes(frame[len(MAGIC) : start]), _mac(_key, header)):
        raise WireError("a message whose MAC does not match: forged, altered, or sealed with another key")
    return header


set_key(key_from_env())
