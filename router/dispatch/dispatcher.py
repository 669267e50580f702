"""The router's side of the worker channels: one inbox for every event, one outbox per worker.

A background thread owns the ``Inbox`` and hands each event to the event loop, which puts it on
the queue of the request it names (all bookkeeping of open requests happens on the loop thread,
so it needs no lock). Events for requests that are not open (finished, aborted, unknown) are
dropped with a debug log. Outboxes are created on first use and each is guarded by its own lock;
sends block (up to ``send_timeout_s``) and so run in the dispatcher's own threads, never on the
loop nor in its default executor (a dead worker must not starve the registry refresh). Aborts go
only to workers still live (sending to a dead one would block a sender thread); the aborts meant
for a worker that is missing are deferred (``failures.DeferredAborts``) and delivered if it comes
back. A watched worker missing from the registry for the grace period ends the requests that
depend on it (``failures.MissingWorkers``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from router.dispatch.failures import DeferredAborts, MissingWorkers
from transfer.channel import Inbox, Outbox
from transfer.errors import PeerTimeout
from transfer.messages import AbortTask, Message, RequestFailed, TokenEvent
from worker.types import MEMBERSHIP, worker_id_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerLost:
    """Put on a request's queue by the router itself: a worker it depends on stopped heartbeating
    (``key``: that incarnation's ``WorkerInfo.instance_key``)."""

    worker_id: str
    key: str = ""


Event = TokenEvent | RequestFailed | WorkerLost


@dataclass
class OpenRequest:
    """An in-flight request: its event queue and the workers whose death would end it."""

    queue: asyncio.Queue[Event]
    watched: set[str] = field(default_factory=set)
    lost: bool = False


class Dispatcher:
    def __init__(
        self,
        inbox_address: str,
        *,
        advertise: str | None = None,
        send_timeout_s: float = 5.0,
        lost_grace_s: float = MEMBERSHIP.lost_grace_s,
    ) -> None:
        self._inbox = Inbox(inbox_address)
        self.reply_to = advertise or self._inbox.address
        self.send_timeout_s = send_timeout_s
        self._missing = MissingWorkers(lost_grace_s)
        self._requests: dict[str, OpenRequest] = {}
        self._outboxes: dict[str, _Peer] = {}
        self._outboxes_lock = threading.Lock()
        self._live_addresses: set[str] | None = None  # None: not known yet (send aborts anyway)
        self._deferred_aborts = DeferredAborts()
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="router-send")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle (call from the event loop) ----------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._receive_forever, name="router-inbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._inbox.close()
        with self._outboxes_lock:
            for peer in self._outboxes.values():
                with peer.lock:
                    peer.close()
            self._outboxes.clear()

    # ---- requests (loop thread) ------------------------------------------------------------

    def open(self, request_id: str, watched: set[str]) -> OpenRequest:
        if request_id in self._requests:
            raise RuntimeError(f"request {request_id} is already open")
        entry = OpenRequest(asyncio.Queue(), set(watched))
        self._requests[request_id] = entry
        return entry

    def close(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    def fail_lost(self, live: set[str], now: float | None = None) -> None:
        """Tell every open request that depends on a worker missing from the registry for at least
        ``lost_grace_s`` (once per request). ``live`` and the watched sets hold instance keys
        (``WorkerInfo.instance_key``): a worker restarted under its old name counts as missing."""
        now = time.monotonic() if now is None else now
        watched = set().union(*(e.watched for e in self._requests.values()))
        lost = self._missing.lost(watched, live, now)
        for entry in self._requests.values():
            dead = sorted(entry.watched & lost)
            if dead and not entry.lost:
                entry.lost = True
                entry.queue.put_nowait(WorkerLost(worker_id_of(dead[0]), dead[0]))

    @property
    def num_open(self) -> int:
        return len(self._requests)

    def _deliver(self, message: Message) -> None:
        request_id = getattr(message, "request_id", None)
        entry = self._requests.get(request_id) if request_id is not None else None
        if entry is None or not isinstance(message, (TokenEvent, RequestFailed)):
            log.debug("dropped %s for request %s (not open)", type(message).__name__, request_id)
            return
        entry.queue.put_nowait(message)

    def _receive_forever(self) -> None:
        assert self._loop is not None
        while not self._stop.is_set():
            try:
                message = self._inbox.recv(timeout_s=0.1)
            except Exception:  # the socket broke: nothing more will arrive; say so loudly
                log.exception("router inbox %s failed; no more worker events will arrive", self.reply_to)
                return
            if message is not None:
                try:
                    self._loop.call_soon_threadsafe(self._deliver, message)
                except RuntimeError:  # the loop closed under us: shutting down
                    return

    # ---- sending (blocking: call in a worker thread) ----------------------------------------

    def send(self, address: str, message: Message) -> None:
        """Send ``message`` to the worker inbox at ``address``. Raises ``PeerTimeout`` if the
        worker accepts nothing within ``send_timeout_s`` (dead or overloaded), or at once if a send
        to it timed out less than ``send_timeout_s`` ago: requests queued behind a dead worker's
        first timeout are routed elsewhere instead of each waiting out a timeout of its own."""
        while True:
            with self._outboxes_lock:
                peer = self._outboxes.get(address)
                if peer is None:
                    peer = self._outboxes[address] = _Peer(Outbox(address, timeout_s=self.send_timeout_s))
            with peer.lock:
                if not peer.closed:  # else pruned meanwhile: make a new one
                    peer.send(message, self.send_timeout_s)
                    return

    async def send_async(self, address: str, message: Message) -> None:
        """``send`` from the event loop."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.send, address, message)

    def abort_soon(self, addresses: list[str], request_id: str) -> None:
        """Tell the live ones among these workers to drop the request, in the background; the
        others when they are back (see the module's docstring)."""
        live = self._live_addresses
        targets = [a for a in dict.fromkeys(addresses) if live is None or a in live]
        if targets:
            self._executor.submit(self._abort, targets, request_id)
        for address in dict.fromkeys(addresses):
            if address not in targets:
                self._deferred_aborts.add(address, request_id)

    def _abort(self, addresses: list[str], request_id: str) -> None:
        for address in addresses:
            try:
                self.send(address, AbortTask(request_id))
            except (PeerTimeout, ValueError) as e:
                log.debug("abort of %s not delivered to %s: %s", request_id, address, e)

    def prune(self, live_addresses: set[str]) -> None:
        """Remember which workers are live; close the outboxes of those that are gone (skipping any
        busy sending right now)."""
        self._live_addresses = set(live_addresses)
        self._deliver_deferred_aborts(self._live_addresses)
        with self._outboxes_lock:
            for address in [a for a in self._outboxes if a not in live_addresses]:
                peer = self._outboxes[address]
                if peer.lock.acquire(blocking=False):
                    try:
                        peer.close()
                        del self._outboxes[address]
                    finally:
                        peer.lock.release()

    def _deliver_deferred_aborts(self, live_addresses: set[str]) -> None:
        for address, request_ids in self._deferred_aborts.take(live_addresses).items():
            log.info(
                "worker at %s is back: aborting %d request(s) failed while it was missing",
                address,
                len(request_ids),
            )
            for request_id in request_ids:
                self._executor.submit(self._abort, [address], request_id)


class _Peer:
    """One worker's outbox; ``lock`` serializes its sends (``Outbox`` is not thread-safe)."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.lock = threading.Lock()
        self.closed = False
        self.timed_out_at: float | None = None  # the last send that timed out (None: the last worked)

    def send(self, message: Message, timeout_s: float) -> None:
        """Send under ``lock``; fail fast while a timeout is fresh."""
        now = time.monotonic()
        if self.timed_out_at is not None and now - self.timed_out_at < timeout_s:
            ago = now - self.timed_out_at
            raise PeerTimeout(f"{self.outbox.address} accepted nothing for {timeout_s}s ({ago:.1f}s ago)")
        try:
            self.outbox.send(message)
        except PeerTimeout:
            self.timed_out_at = time.monotonic()
            raise
        self.timed_out_at = None

    def close(self) -> None:
        self.closed = True
        self.outbox.close()
