"""``tandem up --kv-dtype int8`` end to end: the launcher's store nodes take the chunks the workers
send (int8, the size it computed), the hand-off decodes what an offline split fed the same int8 KV
does, and a second prefill worker finds the first one's prompt in the store."""

from __future__ import annotations

import openai
import pytest
import torch

from cluster.launcher import ClusterConfig, LocalCluster
from engine import LLM, SamplingParams
from engine.config import ModelConfig
from engine.kv_codec import bytes_per_token
from kvstore import StoreClient
from tests.engine.split import drain, prefilled

pytestmark = pytest.mark.slow

CONTEXT = "You answer in one short sentence, and you are always polite and to the point. " * 9  # > 2 chunks


def messages(question: str) -> list[dict]:
    return [{"role": "system", "content": CONTEXT}, {"role": "user", "content": question}]


def offline_int8_split(model_dir, question: str, max_tokens: int) -> str:
    """The answer of a prefill-only engine sending int8 KV to a decode engine, in one process."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    prefill = LLM(str(model_dir), num_pages=256, kv_dtype="int8")
    decode = LLM(str(model_dir), num_pages=256, kv_dtype="int8")
    prompt = prefill.tokenizer.apply_chat_template(messages(question))
    seq = prefilled(prefill, prompt, params, "p")
    out = decode.engine.add_prefilled(prompt, seq.token_ids[-1], params, prefill.engine.export_kv(seq), "d")
    drain(decode)
    return decode.tokenizer.decode(out.token_ids[len(prompt) :])


def test_tandem_up_with_int8_kv(default_model):
    config = ClusterConfig(
        model_dir=default_model, port=0, num_pages=512, num_prefill=2, policy="round_robin", kv_dtype="int8"
    )
    chunk_bytes = (
        bytes_per_token(ModelConfig.from_dir(default_model), torch.float32, "int8") * config.chunk_tokens
    )
    cluster = LocalCluster(config).start()
    try:
        client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        answers = []
        for _ in range(2):  # round robin: prefill-0, then prefill-1
            resp = client.chat.completions.create(
                model=model, messages=messages("Say hi."), max_tokens=12, temperature=0
            )
            answers.append((resp.choices[0].message.content, resp.usage.prompt_tokens_details.cached_tokens))
        with StoreClient(cluster.redis_url) as store:
            nodes = {n.node_id: n for n in store.nodes()}
    finally:
        cluster.stop()
    (first, cached_first), (_, cached_second) = answers
    assert cached_first == 0 and first == offline_int8_split(default_model, "Say hi.", 12)
    assert cached_second >= 2 * config.chunk_tokens  # prefill-1 fetched prefill-0's int8 chunks
    held = nodes["store-0"]
    assert held.num_chunks >= 2 and held.bytes_used == held.num_chunks * chunk_bytes  # slots of the int8 size
