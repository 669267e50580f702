"""Peers run as separate processes, so tests can kill them mid-conversation.

python -m tests.transfer.peers silent-server            # prints its address, never replies
"""

from __future__ import annotations

import sys

from transfer import ReplyServer


def silent_server() -> None:
    server = ReplyServer("tcp://127.0.0.1:0")
    print(server.address, flush=True)
    while True:
        server.recv(1.0)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "silent-server":
        silent_server()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
