"""Peers run as separate processes, so tests can kill them mid-conversation.

python -m tests.transfer.peers silent-server            # prints its address, never replies
python -m tests.transfer.peers stream-then-hang ADDR N  # sends N items of stream 1, then hangs
"""

from __future__ import annotations

import sys
import time

from transfer import Buffer, ReplyServer, StreamSender
from transfer.messages import GetReply


def silent_server() -> None:
    server = ReplyServer("tcp://127.0.0.1:0")
    print(server.address, flush=True)
    while True:
        server.recv(1.0)


def stream_then_hang(address: str, num_items: int) -> None:
    sender = StreamSender(address)
    for i in range(num_items):
        sender.send(1, GetReply((True,), (Buffer.raw(bytes([i]) * 1024),)))
    print("sent", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "silent-server":
        silent_server()
    elif mode == "stream-then-hang":
        stream_then_hang(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
