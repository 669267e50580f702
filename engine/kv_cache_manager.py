"""Sequence-level page bookkeeping on top of :class:`PagePool`: prefix hits, growth, commit, free."""

from __future__ import annotations

from engine.page_pool import PagePool
from engine.sequence import Sequence


class KVCacheManager:
    """Gives sequences the pages their next tokens need, reusing cached prefixes.

    Invariant: ``len(seq.block_table) * page_size >= seq.num_computed_tokens`` and every page in a
    block table holds one reference for that sequence.
    """

    def __init__(self, pool: PagePool, fingerprint: bytes, enable_prefix_caching: bool = True) -> None:
        self.pool = pool
        self.page_size = pool.page_size
        self.fingerprint = fingerprint
        self.enable_prefix_caching = enable_prefix_caching

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached pages for the longest prefix of ``seq`` (at least one token is always left to run,
        so the step that finishes the prompt produces logits). A sequence asking for prompt logprobs
        needs the logits of every prompt position: it takes only pages whose tokens it has scored
        already (none at first; after a preemption, what it scored before)."""
        if not self.enable_prefix_caching:
            return []
        num_full = (seq.num_tokens - 1) // self.page_size
        if seq.prompt_logprobs is not None:  # positions [0, len - 1) are scored
            num_full = min(num_full, (len(seq.prompt_logprobs) - 1) // self.page_size)
        keys = seq.page_keys(num_full, self.page_size, self.fingerprint)
        ps = self.page_size
        blocks = [seq.token_ids[i * ps : (i + 1) * ps] for i in range(num_full)]
        return self.pool.lookup(keys, blocks)

    def pages_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.page_size) - len(seq.block_table))

    def admit(self, seq: Sequence, cached_pages: list[int], num_new_tokens: int) -> bool:
        """Give a sequence without pages its cached prefix plus room for ``num_new_tokens`` more.
        Returns False (and changes nothing) when the pool cannot cover it now."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        num_cached = len(cached_pages) * self.page_size
        needed = -(-(num_cached + num_new_tokens) // self.page_size) - len(cached_pages)
        if needed + self.pool.num_acquirable_free(cached_pages) > self.pool.num_free_pages:
            return False
        self.pool.acquire(cached_pages)
        new_pages = self.pool.allocate(needed)
        assert new_pages is not None
        seq.block_table = list(cached_pages) + new_pages
        seq.num_computed_tokens = num_cached
        seq.num_committed_pages = len(cached_pages)
        return True

    def admit_prefilled(self, seq: Sequence) -> bool:
        """Pages for a sequence whose prompt KV arrives with it (``seq.pending_kv``) plus its next
        token; the prompt counts as computed. False (nothing taken) when the pool is short.

        The prompt's full pages this engine holds already (another choice of the same prompt, an
        earlier turn) are shared, not filled again (``seq.num_shared_kv_pages``); the others are
        registered at once, since their KV is written before the step that admitted it runs, so a
        choice admitted next shares them too."""
        assert seq.pending_kv is not None
        if seq.block_table:  # its prompt's KV is in these pages already (a layer-wise hand-off)
            return self._admit_written(seq)
        cached = self.match_prefix(seq)
        needed = -(-seq.num_tokens // self.page_size) - len(cached)
        if needed + self.pool.num_acquirable_free(cached) > self.pool.num_free_pages:
            return False
        self.pool.acquire(cached)
        pages = self.pool.allocate(needed)
        assert pages is not None
        seq.block_table = cached + pages
        seq.num_shared_kv_pages = seq.num_committed_pages = len(cached)
        seq.num_computed_tokens = seq.num_prompt_tokens
        self.commit(seq)
        return True

    def _admit_written(self, seq: Sequence) -> bool:
        needed = -(-seq.num_tokens // self.page_size) - len(seq.block_table)
        if needed > self.pool.num_free_pages:
            return False
        seq.block_table.extend(self.pool.allocate(needed) or [])
        seq.num_shared_kv_pages = seq.num_committed_pages = 0
        seq.num_computed_tokens = seq.num_prompt_tokens
        self.commit(seq)
        return True

    def grow(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Extend a running sequence's pages to hold ``num_new_tokens`` more; False if no room."""
        needed = self.pages_needed(seq, num_new_tokens)
        if needed == 0:
            return True
        pages = self.pool.allocate(needed)
        if pages is None:
            return False
        seq.block_table.extend(pages)
        return True

    def commit(self, seq: Sequence) -> None:
        """Register the pages that became full since the last commit in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.page_size
        if num_full <= seq.num_committed_pages:
            return
        keys = seq.page_keys(num_full, self.page_size, self.fingerprint)
        ps = self.page_size
        for i in range(seq.num_committed_pages, num_full):
            self.pool.register(seq.block_table[i], keys[i], seq.token_ids[i * ps : (i + 1) * ps])
        seq.num_committed_pages = num_full

    def free(self, seq: Sequence) -> None:
        """Return a sequence's pages (finished or preempted); its computed progress is dropped."""
        self.pool.release(reversed(seq.block_table))  # tail first: evicted before the shared head
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_committed_pages = 0
