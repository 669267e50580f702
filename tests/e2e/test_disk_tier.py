"""Disaggregated serving on store nodes with a disk tier (``tandem up --store-disk-path``): what the
memory tier evicts is served from disk, a cluster restarted on the same path comes back with its
prefixes cached, hot chunks get copies on other nodes, and the answers equal the offline engine's
token for token throughout."""

from __future__ import annotations

import dataclasses

import openai
import pytest

from cluster.launcher import ClusterConfig, LocalCluster
from engine import LLM, SamplingParams
from kvstore import StoreClient

pytestmark = pytest.mark.slow

# Three conversations whose system prompts fill two 64-token chunks each, and differ from the first
# token on: six chunks, more than the prefill's store node keeps in memory (three slots).
CONTEXTS = [f"Context {i}: you answer in one short sentence, and you are always polite. " * 9 for i in "ABC"]


def ask(cluster: LocalCluster, context: str, question: str) -> tuple[str, int]:
    c = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "system", "content": context}, {"role": "user", "content": question}]
    resp = c.chat.completions.create(
        model=c.models.list().data[0].id, messages=messages, max_tokens=12, temperature=0
    )
    return resp.choices[0].message.content, resp.usage.prompt_tokens_details.cached_tokens


def expected(offline: LLM, context: str, question: str) -> str:
    messages = [{"role": "system", "content": context}, {"role": "user", "content": question}]
    return offline.chat(messages, SamplingParams(temperature=0.0, max_tokens=12)).text


def store_nodes(cluster: LocalCluster) -> dict:
    with StoreClient(cluster.redis_url) as store:
        return {n.node_id: n for n in store.nodes()}


def prefill_store(cluster: LocalCluster):
    return store_nodes(cluster)["store-0"]


def test_disaggregated_answers_equal_offline_from_disk_and_after_a_restart(default_model, tmp_path):
    offline = LLM(str(default_model), num_pages=256)
    probe = LocalCluster(ClusterConfig(model_dir=default_model))
    chunk_bytes = probe._kv_bytes_per_token * 64
    config = ClusterConfig(
        model_dir=default_model, port=0, num_pages=512, store_capacity_bytes=3 * chunk_bytes,
        store_disk_path=tmp_path, store_disk_capacity_bytes=64 * chunk_bytes,
    )  # fmt: skip

    cluster = LocalCluster(config).start()
    try:
        for context in CONTEXTS:
            assert ask(cluster, context, "Say hi.")[0] == expected(offline, context, "Say hi.")
        node = prefill_store(cluster)
        assert node.num_evicted >= 3 and node.disk_chunks >= 3, node  # memory overflowed to disk
    finally:
        cluster.stop()  # store nodes keep what memory held on disk as they stop

    # Fresh workers and Redis, the same store directories, a second prefill worker (round robin: each
    # context is asked on prefill-0, then on prefill-1) and replication of chunks fetched twice.
    again = dataclasses.replace(config, num_prefill=2, policy="round_robin", store_replicate_after=1)
    cluster = LocalCluster(again).start()
    try:
        restarted = prefill_store(cluster)
        assert restarted.disk_chunks >= 6 and restarted.num_chunks == 0, restarted
        for context in CONTEXTS:
            for question in ("And goodbye?", "Why?"):  # prefill-0, then prefill-1
                text, cached = ask(cluster, context, question)
                assert text == expected(offline, context, question)
                assert cached >= 128, f"the two context chunks should come from the store, got {cached}"
        nodes = store_nodes(cluster)
        assert nodes["store-0"].disk_hits >= 6
        assert sum(n.num_replicated for n in nodes.values()) >= 1, nodes  # fetched by both: copied
    finally:
        cluster.stop()
