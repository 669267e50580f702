"""The conductor against a real store index: a prompt goes where its prefix is cached."""

from __future__ import annotations

import dataclasses
import time

import requests

from kvstore.index import StoreIndex
from kvstore.keys import chain_keys

PROMPT = list(range(1000, 1200))  # 200 tokens: 3 full chunks of 64


def test_cache_aware_routes_to_the_local_hit(start_router, start_worker, redis_url, default_model):
    start_worker("p0", "prefill")
    p1 = start_worker("p1", "prefill")
    start_worker("d0", "decode")
    keys = chain_keys(PROMPT, p1.info.chunk_tokens, bytes.fromhex(p1.info.fingerprint))
    index = StoreIndex(redis_url)
    index.register(p1.info.store_node_id, "tcp://127.0.0.1:9", 30, keys, {"capacity_bytes": 1 << 20})
    router = start_router()
    router.wait_ready(prefill=2, decode=1)

    def served_by(prompt) -> str:
        r = requests.post(
            router.url + "/v1/completions", json={"model": default_model.name, "prompt": prompt}, timeout=10
        )
        assert r.status_code == 200, r.text
        return r.headers["x-tandem-prefill"]

    assert served_by(PROMPT) == "p1"
    assert served_by(PROMPT[:100] + [7] * 100) == "p1"  # one chunk in common is still a local hit
    assert served_by([7] + PROMPT) == "p0"  # nothing cached: the tie goes to the first worker
    assert router.metric('tandem_predicted_cached_tokens_total{tier="local"}') == 192 + 64
    p1.load = dataclasses.replace(p1.load, queued_prefill_tokens=10_000)
    time.sleep(0.5)  # the new load is published (every 0.2 s) and read (every 0.05 s)
    assert served_by(PROMPT) == "p0"  # the hit is not worth a 10 s queue
    index.close()
