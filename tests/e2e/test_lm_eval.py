"""lm-evaluation-harness's ``local-completions`` model against a real disaggregated cluster: a
six-question multiple-choice task (shipped in ``lm_eval_tasks/``) scored by loglikelihood, which
lm-eval computes from ``echo`` + ``logprobs`` over ``/v1/completions``. Every per-choice
loglikelihood must equal the offline engine's prompt logprobs summed over the same tokens."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import requests
from transformers import AutoTokenizer

from engine import LLM, SamplingParams

pytestmark = pytest.mark.slow

TASK_DIR = Path(__file__).parent / "lm_eval_tasks"
TASK = "tandem_tiny_mc"


@pytest.fixture(scope="module")
def cluster(one_by_one):
    return one_by_one


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The token ids lm-eval sends for one (context, continuation) request: it encodes the whole
    text and the context alone (no special tokens) and scores the tail beyond the context."""
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    assert whole[: len(ctx)] == ctx, "the context must tokenize as a prefix of the whole text"
    return ctx, whole[len(ctx) :]


def test_lm_eval_local_completions_loglikelihood(cluster, default_model, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.chdir(TASK_DIR)  # the task's data_files path is relative to its own directory
    import lm_eval  # after the env: datasets reads its offline flag on import
    from lm_eval.tasks import TaskManager

    model = requests.get(f"{cluster.url}/v1/models", timeout=10).json()["data"][0]["id"]
    model_args = {
        "base_url": f"{cluster.url}/v1/completions",
        "model": model,
        "tokenizer": str(default_model),
        "tokenizer_backend": "huggingface",
        "tokenized_requests": True,
        "num_concurrent": 1,
        "max_retries": 1,  # a failed request raises instead of being retried into a pass
        "batch_size": 4,  # several token-id prompts per request
    }
    with caplog.at_level(logging.WARNING):
        results = lm_eval.simple_evaluate(
            model="local-completions",
            model_args=model_args,
            tasks=[TASK],
            task_manager=TaskManager(include_path=str(TASK_DIR)),
            log_samples=True,
            bootstrap_iters=0,
        )
    assert not [r.message for r in caplog.records if "API request failed" in r.message]

    docs = [json.loads(line) for line in (TASK_DIR / f"{TASK}.jsonl").read_text().splitlines()]
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(len(docs)))
    assert "acc,none" in results["results"][TASK]

    tokenizer = AutoTokenizer.from_pretrained(default_model)
    pairs = [encode_pair(tokenizer, *args) for s in samples for args in s["arguments"]]
    got = [resp for s in samples for resp in s["filtered_resps"]]
    assert len(got) == sum(len(d["choices"]) for d in docs)

    offline = LLM(str(default_model), num_pages=256)
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
    outs = offline.generate([ctx + cont for ctx, cont in pairs], params)
    for (ctx, cont), out, (loglikelihood, is_greedy) in zip(pairs, outs, got):
        scored = out.prompt_logprobs[len(ctx) :]
        assert [e.token_id for e in scored] == cont
        assert math.isfinite(loglikelihood)
        assert loglikelihood == pytest.approx(sum(e.logprob for e in scored), abs=1e-3)
        assert is_greedy == all(e.token_id == max(e.top, key=e.top.get) for e in scored)
