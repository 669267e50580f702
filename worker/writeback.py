"""Writing chunks to a worker's store node off its loop: the loop packs a finished request's chunks
(a copy: its pages are free at once) and moves on; a thread of this writer puts them.

The store is a cache, so the writer never makes anyone wait: past ``max_pending_bytes`` queued,
a batch is dropped (``submit`` says so) rather than back-pressuring the engine, and a put that
fails is logged. ``pending`` counts the batches not yet written, so a draining worker waits for
them; ``close`` writes what is queued, for at most ``timeout_s``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from kvstore.tensors import nbytes
from kvstore.types import StoreError
from transfer.errors import TransferError

log = logging.getLogger("tandem.worker")


class ChunkWriter:
    def __init__(self, store: Any, counters: Any, max_pending_bytes: int = 256 << 20) -> None:
        self._store = store
        self._counters = counters
        self.max_pending_bytes = max_pending_bytes
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending_bytes = 0
        self.pending = 0  # batches submitted, not yet written (or failed)
        self.num_dropped = 0
        self._thread = threading.Thread(target=self._run, name="chunk-writer", daemon=True)
        self._thread.start()

    def submit(self, request_id: str, keys: list[bytes], chunks: list[Any]) -> bool:
        """Queue a batch of chunks (packed copies) for the store; False (dropped) when
        ``max_pending_bytes`` are queued already."""
        size = nbytes(chunks)
        with self._lock:
            if self._pending_bytes and self._pending_bytes + size > self.max_pending_bytes:
                self.num_dropped += 1
                return False
            self._pending_bytes += size
            self.pending += 1
        self._queue.put((request_id, keys, chunks, size))
        return True

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            request_id, keys, chunks, size = item
            try:
                started = time.perf_counter()
                self._store.put(keys, chunks)
                self._counters.transferred("store_put", size, time.perf_counter() - started)
            except (StoreError, TransferError) as e:
                log.warning(
                    "request %s: could not write %d chunks to the store: %s", request_id, len(keys), e
                )
            finally:
                with self._lock:
                    self._pending_bytes -= size
                    self.pending -= 1

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (for at most ``timeout_s``), then stop the thread and close the
        store client it was given."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("the chunk writer still had %d batches to write; dropped", self.pending)
        else:
            self._store.close()
