"""The page pool: fixed-size KV pages, refcounts, and the local prefix cache over them.

Invariants:
- every page is in exactly one state: *in use* (refcount > 0), *cached-free* (refcount 0, still
  holding a registered key, in LRU order, reusable by a prefix hit or evictable), or *free*.
- ``key_to_page`` and ``page_key`` mirror each other; a page is registered only once it is full.
- a hit is re-checked against the page's stored tokens, so a hash collision is a miss, not wrong KV.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence


class PagePool:
    def __init__(self, num_pages: int, page_size: int) -> None:
        if num_pages < 1 or page_size < 1:
            raise ValueError(f"need num_pages >= 1 and page_size >= 1, got {num_pages}, {page_size}")
        self.num_pages = num_pages
        self.page_size = page_size
        self.refcount = [0] * num_pages
        self._free: deque[int] = deque(range(num_pages))
        self._cached_free: OrderedDict[int, None] = OrderedDict()  # LRU: oldest first
        self.key_to_page: dict[bytes, int] = {}
        self.page_key: dict[int, bytes] = {}
        self._page_tokens: dict[int, tuple[int, ...]] = {}
        self.num_evictions = 0

    @property
    def num_free_pages(self) -> int:
        """Pages that ``allocate`` can hand out now (free plus evictable cached ones)."""
        return len(self._free) + len(self._cached_free)

    @property
    def num_used_pages(self) -> int:
        return self.num_pages - self.num_free_pages

    def allocate(self, n: int) -> list[int] | None:
        """``n`` pages with refcount 1, or None if fewer are available (nothing is taken then)."""
        if n > self.num_free_pages:
            return None
        pages = []
        for _ in range(n):
            if self._free:
                page = self._free.popleft()
            else:
                page, _ = self._cached_free.popitem(last=False)
                self._unregister(page)
                self.num_evictions += 1
            self.refcount[page] = 1
            pages.append(page)
        return pages

    def release(self, pages: Sequence[int]) -> None:
        """Drop one reference to each page; unreferenced cached pages stay reusable until evicted."""
        for page in pages:
            assert self.refcount[page] > 0, f"page {page} released more often than taken"
            self.refcount[page] -= 1
            if self.refcount[page] == 0:
                if page in self.page_key:
                    self._cached_free[page] = None
                else:
                    self._free.append(page)

    def lookup(self, keys: Sequence[bytes], token_blocks: Sequence[Sequence[int]]) -> list[int]:
        """Pages holding the longest cached prefix of ``keys`` (no reference is taken)."""
        pages = []
        for key, tokens in zip(keys, token_blocks):
            page = self.key_to_page.get(key)
            if page is None or self._page_tokens[page] != tuple(tokens):
                break
            pages.append(page)
        return pages

    def acquire(self, pages: Sequence[int]) -> None:
        """Take a reference to cached pages found by :meth:`lookup` (marks them recently used)."""
        for page in pages:
            if self.refcount[page] == 0:
                del self._cached_free[page]
            self.refcount[page] += 1

    def num_acquirable_free(self, pages: Sequence[int]) -> int:
        """How many of ``pages`` sit in the cached-free list (acquiring them uses up free capacity)."""
        return sum(1 for p in pages if self.refcount[p] == 0)

    def register(self, page: int, key: bytes, tokens: Sequence[int]) -> None:
        """Make a full, in-use page findable by its key. A key cached elsewhere already is kept there."""
        assert self.refcount[page] > 0, "only pages in use can be registered"
        if key in self.key_to_page or page in self.page_key:
            return
        self.key_to_page[key] = page
        self.page_key[page] = key
        self._page_tokens[page] = tuple(tokens)

    def reset_prefix_cache(self) -> None:
        """Forget every cached-free page (in-use pages keep their keys)."""
        while self._cached_free:
            page, _ = self._cached_free.popitem(last=False)
            self._unregister(page)
            self._free.append(page)

    def _unregister(self, page: int) -> None:
        key = self.page_key.pop(page)
        del self.key_to_page[key]
        del self._page_tokens[page]
