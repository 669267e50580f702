"""A stand-in worker for router tests: real registry entry, real ZeroMQ inbox, scripted answers.

It speaks the serving protocol like the real workers (a task for ``n`` choices is answered
choice by choice, as if each were its own task): a prefill worker answers a GenerateTask
with the first token and hands a DecodeTask to the decode worker; a decode (or colocated) worker
streams the rest, one token per event, ``token_delay_s`` apart. The output is ``reply`` cut at
``max_tokens`` ("length") or its end ("stop"). Everything it receives is recorded.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field

from transfer.channel import Inbox, Outbox
from transfer.messages import AbortTask, Buffer, DecodeTask, GenerateTask, Message, RequestFailed, TokenEvent
from worker.registry import WorkerRegistry
from worker.types import WorkerInfo, WorkerLoad

TTL_S = 1.0


@dataclass
class _Running:
    request_id: str
    reply_to: str
    tokens: list[int]  # still to send
    finish_reason: str
    next_at: float


@dataclass
class Behaviour:
    reply: list[int] = field(default_factory=lambda: [1, 2, 3])
    prefill_delay_s: float = 0.0
    token_delay_s: float = 0.0
    cached_local: int = 0
    cached_store: int = 0
    fail: tuple[str, str] | None = None  # (code, message): answer every task with RequestFailed
    silent: bool = False  # receive tasks, answer nothing


class FakeWorker:
    def __init__(
        self, redis_url: str, worker_id: str, role: str, *, model: str, max_model_len: int = 2048, **load
    ) -> None:
        self.behaviour = Behaviour()
        self.inbox = Inbox("tcp://127.0.0.1:0")
        self.info = WorkerInfo(
            worker_id,
            role,
            self.inbox.address,
            model,
            "ab" * 16,
            16,
            64,
            max_model_len,
            f"store-{worker_id}",
        )
        self.load = WorkerLoad(**{"free_pages": 1000, "total_pages": 1000, **load})
        self.received: list[Message] = []
        self._registry = WorkerRegistry(redis_url, ttl_s=TTL_S)
        self._outboxes: dict[str, Outbox] = {}
        self._running: list[_Running] = []
        self._stop = threading.Event()
        self._heartbeat = True
        self._registry.publish(self.info, self.load)
        self._thread = threading.Thread(target=self._serve, name=f"fake-{worker_id}", daemon=True)
        self._thread.start()

    @property
    def worker_id(self) -> str:
        return self.info.worker_id

    def of_kind(self, cls: type) -> list:
        return [m for m in list(self.received) if isinstance(m, cls)]

    def wait_for(self, cls: type, timeout_s: float = 5.0) -> list:
        deadline = time.monotonic() + timeout_s
        while not self.of_kind(cls) and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.of_kind(cls)

    def die(self) -> None:
        """Stop answering and heartbeating, as a killed process would (its entry lapses after TTL_S)."""
        self._heartbeat = False
        self.behaviour.silent = True
        self._running.clear()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._registry.remove(self.worker_id)
        self._registry.close()
        self.inbox.close()
        for outbox in self._outboxes.values():
            outbox.close()

    def _send(self, address: str, message: Message) -> None:
        if address not in self._outboxes:
            self._outboxes[address] = Outbox(address)
        self._outboxes[address].send(message)

    def _serve(self) -> None:
        next_beat = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if self._heartbeat and now >= next_beat:
                self._registry.publish(self.info, self.load)
                next_beat = now + TTL_S / 5
            message = self.inbox.recv(timeout_s=0.005)
            if message is not None:
                self.received.append(message)
                if not self.behaviour.silent:
                    self._handle(message)
            for run in [r for r in self._running if r.next_at <= time.monotonic()]:
                token = run.tokens.pop(0)
                done = not run.tokens
                self._send(
                    run.reply_to,
                    TokenEvent(run.request_id, self.worker_id, (token,), run.finish_reason if done else None),
                )
                run.next_at = time.monotonic() + self.behaviour.token_delay_s
                if done:
                    self._running.remove(run)

    def _handle(self, message: Message) -> None:
        b = self.behaviour
        if isinstance(message, AbortTask):
            self._running = [r for r in self._running if r.request_id != message.request_id]
            return
        if not isinstance(message, (GenerateTask, DecodeTask)):
            return
        ids = [message.request_id, *getattr(message, "choice_ids", ())]  # n > 1: one answer per choice
        if b.fail is not None:
            for request_id in ids:
                self._send(message.reply_to, RequestFailed(request_id, self.worker_id, *b.fail))
            return
        max_tokens = message.sampling.max_tokens
        output = b.reply[:max_tokens]
        finish = "length" if len(b.reply) >= max_tokens else "stop"
        if isinstance(message, DecodeTask):
            self._running.append(
                _Running(message.request_id, message.reply_to, output[1:], finish, time.monotonic())
            )
        else:
            for request_id in ids:
                self._prefill(dataclasses.replace(message, request_id=request_id, choice_ids=(),
                                                  sampling=dataclasses.replace(message.sampling, n=1)), output, finish)  # fmt: skip

    def _prefill(self, task: GenerateTask, output: list[int], finish: str) -> None:
        """Answer the first token; hand the rest to the decode worker named, or decode it here."""
        b = self.behaviour
        time.sleep(b.prefill_delay_s)
        first_done = len(output) == 1
        first = TokenEvent(
            task.request_id, self.worker_id, (output[0],), finish if first_done else None,
            b.cached_local, b.cached_store,
        )  # fmt: skip
        if not first_done and task.decode_address is None:  # colocated: decode here
            start_at = time.monotonic() + b.token_delay_s
            self._running.append(_Running(task.request_id, task.reply_to, output[1:], finish, start_at))
        elif not first_done:
            handoff = DecodeTask(
                task.request_id, task.token_ids, output[0], task.sampling, task.reply_to, (Buffer.raw(b"kv"),)
            )
            self._send(task.decode_address, handoff)
        self._send(task.reply_to, first)
