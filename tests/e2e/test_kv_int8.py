"""KV that travels as int8 (``--kv-dtype int8``) between real processes: the hand-off (whole and
layer by layer) and the store carry the encoded bytes, and what decodes from them equals an
offline engine fed the same encoded KV, token for token."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.config import ModelConfig
from engine.kv_codec import bytes_per_token
from kvstore.client import StoreClient
from kvstore.keys import chain_keys
from tests.e2e.procs import spawn, stop, wait_for_workers
from tests.e2e.router_stub import tokens
from tests.engine.conftest import build_tiny
from tests.engine.reference import mixed_prompts
from tests.engine.split import drain, prefilled

GREEDY = {"temperature": 0.0, "max_tokens": 12, "ignore_eos": True}
CHUNK_TOKENS = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny("llama", tmp_path_factory.mktemp("llama-int8-kv"))


@pytest.fixture(scope="module")
def chunk_bytes(model):
    return bytes_per_token(ModelConfig.from_dir(model), torch.float32, "int8") * CHUNK_TOKENS


@pytest.fixture(scope="module")
def cluster(model, redis_url, chunk_bytes):
    """Two prefill workers (layer by layer, and whole) and a decode worker, all ``--kv-dtype int8``,
    each with a store node that takes chunks of exactly the int8 size and refuses any other."""
    common = ["--model", str(model), "--redis-url", redis_url, "--threads", "1", "--page-size", "8",
              "--num-pages", "256", "--kv-dtype", "int8", "--chunk-tokens", str(CHUNK_TOKENS)]  # fmt: skip
    procs = []
    try:
        for node, worker, extra in [
            ("store-0", "prefill-0", ["--handoff-layers", "1"]),
            ("store-1", "prefill-1", ["--handoff-layers", "0"]),
            ("store-d", "decode-0", []),
        ]:
            procs.append(spawn("kvstore.node_main", "--redis-url", redis_url, "--listen", "tcp://127.0.0.1:0",
                               "--node-id", node, "--capacity-bytes", str(16 << 20),
                               "--chunk-bytes", str(chunk_bytes)))  # fmt: skip
            role = "decode.main" if worker.startswith("decode") else "prefill.main"
            procs.append(spawn(role, *common, "--worker-id", worker, "--store-node", node, *extra))
        live = wait_for_workers(redis_url, {"prefill-0", "prefill-1", "decode-0"}, procs)
        yield {wid: w.info.address for wid, w in live.items()}
    finally:
        stop(procs)


def offline_split(model, prompt: list[int], params: SamplingParams, chunks: list | None = None) -> list[int]:
    """The split done in one process: a prefill-only engine sending int8 KV, a decode engine taking
    it. ``chunks``: store chunks of the prompt's prefix the prefill engine imports first (as a
    worker that finds them in the store does)."""
    prefill = LLM(str(model), page_size=8, num_pages=256, kv_dtype="int8")
    if chunks is not None:
        assert prefill.engine.import_prefix(prompt, chunks) == len(chunks) * CHUNK_TOKENS
    seq = prefilled(prefill, prompt, params, "p")
    kv = prefill.engine.export_kv(seq)
    assert kv.dtype == torch.int8
    decode = LLM(str(model), page_size=8, num_pages=256, kv_dtype="int8")
    out = decode.engine.add_prefilled(prompt, seq.token_ids[-1], params, kv, "d")
    drain(decode)
    return out.token_ids[len(prompt) :]


@pytest.mark.parametrize("prefill", ["prefill-0", "prefill-1"])
def test_int8_hand_off_decodes_what_the_offline_split_does(model, cluster, router, prefill):
    params = SamplingParams(**GREEDY)
    for i, prompt in enumerate(mixed_prompts(250, seed=40)[:3]):
        events = router.run(cluster[prefill], prompt, GREEDY, cluster["decode-0"], f"{prefill}-{i}", prefill)
        assert [e.worker_id for e in events[:2]] == [prefill, "decode-0"]
        assert tokens(events) == offline_split(model, prompt, params)


def test_int8_chunks_from_the_store_are_the_prefix_of_the_next_request(
    model, cluster, router, redis_url, chunk_bytes
):
    """prefill-0 stores a prompt's chunks (int8, the only size its node takes); prefill-1 finds
    them in the store, and the answer equals an offline split whose prefill imported those chunks."""
    params = SamplingParams(**GREEDY)
    base = mixed_prompts(250, seed=41)[4][:70]  # 4 full 16-token chunks
    router.run(cluster["prefill-0"], base, GREEDY, cluster["decode-0"], "s0")
    again = base[:66] + [7, 8, 9]
    remote = router.run(cluster["prefill-1"], again, GREEDY, cluster["decode-0"], "s1")
    assert remote[0].num_cached_store == 64 and remote[0].num_cached_local == 0
    fingerprint = LLM(str(model), page_size=8, num_pages=8, kv_dtype="int8").engine.fingerprint
    keys = chain_keys(again[:64], CHUNK_TOKENS, fingerprint)
    client = StoreClient(redis_url)
    try:
        stored = client.get(keys)
    finally:
        client.close()
    assert [c.dtype for c in stored] == [torch.int8] * 4
    assert all(c.numel() == chunk_bytes for c in stored)
    assert tokens(remote) == offline_split(model, again, params, chunks=stored)
