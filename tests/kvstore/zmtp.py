"""A DEALER peer speaking ZMTP 3.0 over a plain TCP socket, so a test controls exactly when the
bytes of a reply are read (a libzmq socket drains the connection in its own I/O thread).

Real sockets, real protocol: only the reading pace is ours. Supports the NULL mechanism, message
frames, and skipping the PING commands a heartbeating peer sends.
"""

from __future__ import annotations

import socket
import struct

_FLAG_MORE, _FLAG_LONG, _FLAG_COMMAND = 1, 2, 4


class SlowDealer:
    def __init__(self, address: str, *, rcvbuf_bytes: int = 64 * 1024) -> None:
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        self._pending = b""  # bytes read ahead by read_some, handed out first
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)  # before connect
        self._sock.connect((host, int(port)))
        greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
        self._sock.sendall(greeting)
        peer = self._read_exact(64)
        assert peer[0] == 0xFF and peer[10] == 3, f"not a ZMTP 3 peer: {peer[:12]!r}"
        self._send_frame(b"\x05READY" + _prop(b"Socket-Type", b"DEALER"), _FLAG_COMMAND)
        flags, body = self._read_frame()
        assert flags & _FLAG_COMMAND and body.startswith(b"\x05READY"), f"expected READY, got {body[:16]!r}"

    def send_multipart(self, frames: list) -> None:
        for i, frame in enumerate(frames):
            self._send_frame(bytes(memoryview(frame)), _FLAG_MORE if i < len(frames) - 1 else 0)

    def recv_multipart(self) -> list[bytes]:
        frames = []
        while True:
            flags, body = self._read_frame()
            if flags & _FLAG_COMMAND:
                continue  # PING from the peer's heartbeat: skipping it is allowed while reading
            frames.append(body)
            if not flags & _FLAG_MORE:
                return frames

    def read_some(self, nbytes: int) -> None:
        """Consume the first ``nbytes`` of what the peer sent (a reader that starts, then stalls)."""
        data = self._read_exact(nbytes)
        self._pending = data + self._pending

    def close(self) -> None:
        self._sock.close()

    def _send_frame(self, body: bytes, flags: int) -> None:
        if len(body) > 255:
            self._sock.sendall(bytes([flags | _FLAG_LONG]) + struct.pack(">Q", len(body)) + body)
        else:
            self._sock.sendall(bytes([flags, len(body)]) + body)

    def _read_frame(self) -> tuple[int, bytes]:
        flags = self._read_exact(1)[0]
        size = struct.unpack(">Q", self._read_exact(8))[0] if flags & _FLAG_LONG else self._read_exact(1)[0]
        return flags, self._read_exact(size)

    def _read_exact(self, nbytes: int) -> bytes:
        out = bytearray(self._pending[:nbytes])
        self._pending = self._pending[nbytes:]
        while len(out) < nbytes:
            chunk = self._sock.recv(nbytes - len(out))
            if not chunk:
                raise ConnectionError("peer closed the connection")
            out += chunk
        return bytes(out)


def _prop(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value
