"""The e2e tests' stand-in for the router: sends generate tasks to workers over ZeroMQ, collects
the events of each request."""

from __future__ import annotations

import time

from transfer.channel import Inbox, Outbox
from transfer.messages import GenerateTask, RequestFailed, Sampling


class Router:
    """The test's stand-in for the router: sends tasks, collects events per request."""

    def __init__(self) -> None:
        self.inbox = Inbox("tcp://127.0.0.1:0")
        self.outboxes: dict[str, Outbox] = {}

    def run(
        self,
        address: str,
        prompt: list[int],
        sampling: dict,
        decode: str | None,
        rid: str,
        prefill_id: str | None = None,
    ) -> list:
        """The request's events in the order the router streams them. With ``prefill_id`` (the
        worker at ``address``), decode events that overtook its first token (they travel on
        another connection) wait behind it, as ``router.dispatch.generation`` holds them."""
        box = self.outboxes.setdefault(address, Outbox(address))
        box.send(GenerateTask(rid, tuple(prompt), Sampling(**sampling), self.inbox.address, decode))
        events, early, done = [], [], False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = self.inbox.recv(1.0)
            if msg is None:
                continue
            assert msg.request_id == rid
            held = (
                prefill_id is not None and not events and getattr(msg, "worker_id", prefill_id) != prefill_id
            )
            (early if held else events).append(msg)
            if not held:
                events += early
                early.clear()
            done = done or isinstance(msg, RequestFailed) or msg.finish_reason is not None
            if done and not early:
                return events
        raise AssertionError(f"request {rid} did not finish")

    def close(self) -> None:
        self.inbox.close()
        for box in self.outboxes.values():
            box.close()


def tokens(events: list) -> list[int]:
    return [t for e in events for t in e.token_ids]
