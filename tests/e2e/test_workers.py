"""Prefill and decode workers as real processes, driven over real ZeroMQ by the test acting as
the router: the split across processes (KV through the wire and the store) changes no token."""

from __future__ import annotations

import argparse
import time

import pytest
import torch
import xxhash

from engine import LLM, SamplingParams
from kvstore.client import StoreClient
from kvstore.keys import chain_keys
from kvstore.tensors import to_buffer
from tests.e2e.procs import spawn, stop, wait_for_workers
from tests.e2e.router_stub import tokens
from tests.engine.conftest import build_tiny
from tests.engine.reference import mixed_prompts
from tests.kvstore.procs import node_in_thread, wait_until
from transfer.channel import Outbox
from transfer.messages import (
    BAD_REQUEST,
    UNAVAILABLE,
    AbortTask,
    Buffer,
    DecodeTask,
    GenerateTask,
    KVLayers,
    RequestFailed,
    Sampling,
    TokenEvent,
)
from worker.registry import WorkerRegistry

GREEDY = {"temperature": 0.0, "max_tokens": 12, "ignore_eos": True}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def cluster(model, redis_url):
    """Three store nodes (sized by their first chunk, as a store outside ``tandem up`` may be), two
    prefill workers (one handing KV off layer by layer, one whole) and one decode worker, each
    with its own store node: all child processes."""
    redis = argparse.Namespace(url=redis_url)
    procs = []
    try:
        common = [
            "--model",
            str(model),
            "--redis-url",
            redis.url,
            "--threads",
            "1",
            "--page-size",
            "8",
            "--num-pages",
            "256",
        ]
        for i in range(2):
            procs.append(spawn("kvstore.node_main", "--redis-url", redis.url, "--listen", "tcp://127.0.0.1:0",
                               "--node-id", f"store-{i}", "--capacity-bytes", str(64 << 20)))  # fmt: skip
            # prefill-0 hands KV off layer by layer as it computes them, prefill-1 whole afterwards
            procs.append(spawn("prefill.main", *common, "--worker-id", f"prefill-{i}", "--store-node", f"store-{i}",
                               "--chunk-tokens", "16", "--handoff-layers", str(1 - i)))  # fmt: skip
        procs.append(spawn("kvstore.node_main", "--redis-url", redis.url, "--listen", "tcp://127.0.0.1:0",
                           "--node-id", "store-d", "--capacity-bytes", str(64 << 20)))  # fmt: skip
        procs.append(spawn("decode.main", *common, "--worker-id", "decode-0", "--store-node", "store-d",
                           "--chunk-tokens", "16"))  # fmt: skip
        live = wait_for_workers(redis.url, {"prefill-0", "prefill-1", "decode-0"}, procs)
        yield {wid: w.info.address for wid, w in live.items()}, procs
    finally:
        stop(procs)


def prefilled_offline(model, prompt: list[int], num_pages: int) -> tuple[LLM, object]:
    """An offline engine and ``prompt`` prefilled on it (prefill only, greedy): its sequence,
    pages still held, for tests that hand its KV over themselves."""
    offline = LLM(str(model), page_size=8, num_pages=num_pages)
    seq = offline.engine.add_request(prompt, SamplingParams(**GREEDY), request_id="p", prefill_only=True)
    while offline.engine.has_unfinished():
        offline.engine.step()
    return offline, seq


def test_prefill_then_decode_equals_single_process(model, cluster, router):
    addresses, _ = cluster
    offline = LLM(str(model), page_size=8, num_pages=256)
    for i, prompt in enumerate(mixed_prompts(250, seed=20)[:5]):
        events = router.run(
            addresses["prefill-0"], prompt, GREEDY, addresses["decode-0"], f"r{i}", "prefill-0"
        )
        assert [e.worker_id for e in events[:2]] == ["prefill-0", "decode-0"]
        assert events[-1].finish_reason == "length"
        expect = offline.generate([prompt], SamplingParams(**GREEDY))[0].token_ids
        assert tokens(events) == expect


def test_seeded_sampling_survives_the_split(model, cluster, router):
    addresses, _ = cluster
    sampling = {"temperature": 0.8, "top_p": 0.9, "max_tokens": 10, "seed": 5, "ignore_eos": True}
    prompt = mixed_prompts(250, seed=21)[1]
    events = router.run(addresses["prefill-1"], prompt, sampling, addresses["decode-0"], "seeded")
    offline = LLM(str(model), page_size=8, num_pages=64)
    assert tokens(events) == offline.generate([prompt], SamplingParams(**sampling))[0].token_ids


def test_second_request_hits_locally_then_through_the_store(model, cluster, router):
    addresses, _ = cluster
    base = mixed_prompts(250, seed=22)[4]  # 70 tokens: 4 full 16-token chunks
    first = router.run(addresses["prefill-0"], base, GREEDY, addresses["decode-0"], "h0")
    assert first[0].num_cached_local == 0 and first[0].num_cached_store == 0
    again = base[:66] + [7, 8, 9]
    local = router.run(addresses["prefill-0"], again, GREEDY, addresses["decode-0"], "h1")
    assert local[0].num_cached_local >= 64 and local[0].num_cached_store == 0
    remote = router.run(addresses["prefill-1"], again, GREEDY, addresses["decode-0"], "h2")
    assert remote[0].num_cached_store == 64 and remote[0].num_cached_local == 0
    assert tokens(local) == tokens(remote)


def test_the_next_turn_reuses_the_answer_the_decode_worker_wrote_back(model, cluster, redis_url, router):
    """Turn 1 is prefilled on prefill-0 and decoded on decode-0, which writes the chunks its answer
    completed to its own store node. Turn 2 (turn 1 + its answer + more) on prefill-1 then finds
    the prompt's chunks on store-0 and the answer's on store-d: both come from the store."""
    addresses, _ = cluster
    prompt = [5 + (7 * i) % 240 for i in range(40)]  # 2 full 16-token chunks
    sampling = {**GREEDY, "max_tokens": 30}  # 40 + 30 tokens: KV computed for 69, 4 full chunks
    turn1 = router.run(addresses["prefill-0"], prompt, sampling, addresses["decode-0"], "t1")
    answer = tokens(turn1)
    assert len(answer) == 30
    turn2_prompt = prompt + answer + [3, 4, 5]
    # the decode worker writes turn 1's answer back off its loop, after its last token: wait for it
    offline = LLM(str(model), page_size=16, num_pages=64)
    wait_for_chunks(redis_url, chain_keys((prompt + answer)[:-1], 16, offline.engine.fingerprint), 4)
    turn2 = router.run(addresses["prefill-1"], turn2_prompt, sampling, addresses["decode-0"], "t2")
    assert turn2[0].num_cached_store == 64 and turn2[0].num_cached_local == 0
    # the same two turns in one engine with the same chunking: its turn 2 reuses the same 64 tokens
    params = SamplingParams(**sampling)
    assert offline.generate([prompt], params)[0].token_ids == answer
    again = offline.generate([turn2_prompt], params)[0]
    assert again.num_cached_tokens == 64
    assert tokens(turn2) == again.token_ids


def test_bad_sampling_fails_the_request_and_the_worker_keeps_serving(cluster, router):
    addresses, _ = cluster
    events = router.run(
        addresses["prefill-0"], [5, 6, 7], {"temperature": -1.0}, addresses["decode-0"], "bad"
    )
    assert isinstance(events[-1], RequestFailed) and "temperature" in events[-1].message
    ok = router.run(addresses["prefill-0"], [5, 6, 7], GREEDY, addresses["decode-0"], "ok")
    assert isinstance(ok[-1], TokenEvent) and len(tokens(ok)) == 12


def test_an_abort_that_overtakes_the_hand_off_drops_the_kv(cluster, router):
    addresses, _ = cluster
    decode = router.outboxes.setdefault(addresses["decode-0"], Outbox(addresses["decode-0"]))
    decode.send(AbortTask("early-abort"))  # the client hung up before prefill finished
    prefill = router.outboxes.setdefault(addresses["prefill-0"], Outbox(addresses["prefill-0"]))
    prefill.send(
        GenerateTask(
            "early-abort", (5, 6, 7, 8), Sampling(**GREEDY), router.inbox.address, addresses["decode-0"]
        )
    )
    events = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        msg = router.inbox.recv(0.2)
        if msg is not None:
            events.append(msg)
    assert [e.worker_id for e in events] == ["prefill-0"], "decode must not run an aborted request"


def test_a_poisoned_store_chunk_is_recomputed_and_replaced_never_trusted(model, cluster, redis_url, router):
    """A hostile client stores 16 bytes under the key of a real prompt's first chunk (keys are
    computable): the prefill worker that fetches it recomputes, deletes it, writes the real chunks
    back, and answers exactly as the offline engine; the next worker fetches the real ones."""
    addresses, procs = cluster
    offline = LLM(str(model), page_size=8, num_pages=256)
    prompt = mixed_prompts(250, seed=23)[4]  # 4 full 16-token chunks before its last token
    keys = chain_keys(prompt[:-1], 16, offline.engine.fingerprint)
    attacker = StoreClient(redis_url, node_id="store-1")
    try:
        attacker.put(keys[:2], [torch.zeros(4), torch.zeros(2, 2, dtype=torch.float16)])
    finally:
        attacker.close()
    expect = offline.generate([prompt], SamplingParams(**GREEDY))[0].token_ids
    poisoned = router.run(addresses["prefill-0"], prompt, GREEDY, addresses["decode-0"], "poisoned")
    assert poisoned[0].num_cached_store == 0 and tokens(poisoned) == expect
    healed = router.run(addresses["prefill-1"], prompt, GREEDY, addresses["decode-0"], "healed")
    assert healed[0].num_cached_store == 64 and tokens(healed) == expect
    assert all(p.poll() is None for p in procs), "every worker and store node is still running"


@pytest.mark.parametrize(
    "kv",
    [torch.zeros(4), torch.zeros(2, 2, 1, 1, 8, 16, dtype=torch.float16), torch.zeros(2, 2, 1, 1, 8, 16)],
    ids=["flat", "wrong-dtype", "wrong-layout"],
)
def test_a_decode_task_with_kv_of_the_wrong_shape_fails_that_request_only(cluster, router, kv):
    addresses, procs = cluster
    decode = router.outboxes.setdefault(addresses["decode-0"], Outbox(addresses["decode-0"]))
    sampling = Sampling(**GREEDY)
    decode.send(DecodeTask("bad-kv", (5, 6, 7), 9, sampling, router.inbox.address, (to_buffer(kv),)))
    reply = router.inbox.recv(30.0)
    assert isinstance(reply, RequestFailed) and reply.request_id == "bad-kv" and reply.code == BAD_REQUEST
    assert "this engine's pages need" in reply.message
    ok = router.run(addresses["prefill-0"], [5, 6, 7], GREEDY, addresses["decode-0"], f"after-{kv.dtype}")
    assert isinstance(ok[-1], TokenEvent) and len(tokens(ok)) == 12
    assert all(p.poll() is None for p in procs)


def test_tasks_naming_unreachable_reply_addresses_do_not_stall_the_worker(cluster, router, tmp_path):
    """Three rejected tasks whose reply_to nobody listens on used to block the worker 5 s each;
    the replies now wait in their own queues and the next request is served at once."""
    addresses, procs = cluster
    prefill = router.outboxes.setdefault(addresses["prefill-0"], Outbox(addresses["prefill-0"]))
    for i in range(3):
        nowhere = f"ipc://{tmp_path}/nobody-{i}"
        prefill.send(
            GenerateTask(f"stall-{i}", (5, 6), Sampling(temperature=-1.0), nowhere, addresses["decode-0"])
        )
    # sent after them, on the same connection: it waits behind them in the worker's inbox
    prefill.send(
        GenerateTask("behind", (5, 6, 7), Sampling(**GREEDY), router.inbox.address, addresses["decode-0"])
    )
    first = router.inbox.recv(10.0)  # the old worker needed 15 s before it even read this task
    assert isinstance(first, TokenEvent) and first.request_id == "behind"
    while first.finish_reason is None:
        first = router.inbox.recv(30.0)
    assert all(p.poll() is None for p in procs)


def test_a_hand_off_corrupted_on_the_way_fails_its_request_never_decodes_it(model, cluster, router):
    """A bit of the KV flips between prefill and decode: the decode worker, checking the bytes
    against the checksum prefill sent, fails the request (the router would prefill it again)."""
    addresses, procs = cluster
    prompt = mixed_prompts(250, seed=31)[3]
    offline, seq = prefilled_offline(model, prompt, num_pages=64)
    good = to_buffer(offline.engine.export_kv(seq))
    data = bytearray(memoryview(good.data))
    data[len(data) // 2] ^= 0x10
    corrupt = Buffer(data, good.dtype, good.shape, checksum=xxhash.xxh3_64_intdigest(good.data))
    decode = router.outboxes.setdefault(addresses["decode-0"], Outbox(addresses["decode-0"]))
    first = seq.output_token_ids[0]
    decode.send(
        DecodeTask("flipped", tuple(prompt), first, Sampling(**GREEDY), router.inbox.address, (corrupt,))
    )
    reply = router.inbox.recv(30.0)
    assert isinstance(reply, RequestFailed) and reply.request_id == "flipped" and reply.code == UNAVAILABLE
    assert "corrupt" in reply.message
    ok = router.run(addresses["prefill-0"], prompt, GREEDY, addresses["decode-0"], "after-flip")
    assert tokens(ok) == offline.generate([prompt], SamplingParams(**GREEDY))[0].token_ids
    assert all(p.poll() is None for p in procs)


@pytest.mark.parametrize("fault", ["lost", "corrupt"])
def test_a_layer_wise_hand_off_missing_a_layer_fails_its_request_and_frees_everything(
    model, cluster, redis_url, router, fault
):
    """The prompt's KV is sent ahead a layer at a time; one layer never arrives (or arrives with
    bytes that fail their checksum). The task that follows fails with a retryable error naming the
    layer, nothing is decoded from the rest, no page stays taken, and the next request is served."""
    addresses, procs = cluster
    prompt = mixed_prompts(250, seed=33)[3]
    offline, seq = prefilled_offline(model, prompt, num_pages=64)
    num_layers = offline.engine.model_cfg.num_layers
    decode = router.outboxes.setdefault(addresses["decode-0"], Outbox(addresses["decode-0"]))
    rid = f"layer-{fault}"
    for layer in range(num_layers):
        part = to_buffer(offline.engine.pack_layers(seq, layer, 1))
        if layer == 1 and fault == "lost":
            continue
        if layer == 1:  # one byte changes on the way; the checksum is the one prefill computed
            data = bytearray(memoryview(part.data))
            data[7] ^= 0x01
            part = Buffer(data, part.dtype, part.shape, checksum=xxhash.xxh3_64_intdigest(part.data))
        decode.send(KVLayers(rid, layer, (part,)))
    first = seq.output_token_ids[0]
    decode.send(
        DecodeTask(
            rid,
            tuple(prompt),
            first,
            Sampling(**GREEDY),
            router.inbox.address,
            (),
            streamed_layers=num_layers,
        )
    )
    reply = router.inbox.recv(30.0)
    assert isinstance(reply, RequestFailed) and reply.request_id == rid and reply.code == UNAVAILABLE
    assert ("layers [1] of" if fault == "lost" else "layers 1+ arrived corrupted") in reply.message
    registry = WorkerRegistry(redis_url)
    try:

        def decode_idle() -> bool:
            load = next(w.load for w in registry.live() if w.info.worker_id == "decode-0")
            return load.num_running == 0 and load.free_pages == load.total_pages

        wait_until(decode_idle, 30, "decode-0 to report every page free")
    finally:
        registry.close()
    ok = router.run(addresses["prefill-0"], prompt, GREEDY, addresses["decode-0"], f"after-{fault}")
    assert tokens(ok) == offline.generate([prompt], SamplingParams(**GREEDY))[0].token_ids
    assert all(p.poll() is None for p in procs)


def test_a_store_chunk_corrupted_at_rest_is_recomputed_and_deleted(model, cluster, redis_url, router):
    """A store node's memory goes bad under a chunk: the prefill worker that fetches it finds the
    bytes do not match the checksum they were put with, recomputes, answers exactly as the
    offline engine, and deletes the chunk."""
    addresses, procs = cluster
    prompt = mixed_prompts(250, seed=32)[4]  # 4 full 16-token chunks before its last token
    offline, seq = prefilled_offline(model, prompt, num_pages=256)
    keys, chunks = offline.engine.pack_chunks(seq, len(prompt) - 1, 16)
    with node_in_thread(redis_url, "store-bad") as node:
        writer = StoreClient(redis_url, node_id="store-bad")
        try:
            assert writer.put(keys, chunks) == [True] * len(keys)
        finally:
            writer.close()
        node.pool.view(node.pool.get(keys[0]))[7] ^= 0x40  # the first chunk's bytes go bad at rest
        expect = offline.generate([prompt], SamplingParams(**GREEDY))[0].token_ids
        events = router.run(addresses["prefill-1"], prompt, GREEDY, addresses["decode-0"], "at-rest")
        assert events[0].num_cached_store == 0 and tokens(events) == expect
        assert not node.pool.contains(keys[0])  # deleted, so that the real chunk replaces it
    assert all(p.poll() is None for p in procs)


def wait_for_chunks(redis_url: str, keys: list[bytes], count: int, timeout_s: float = 15.0) -> None:
    """Until the store index holds the first ``count`` of ``keys`` (on any node)."""
    client = StoreClient(redis_url)
    try:
        wait_until(
            lambda: client.match(keys[:count]).anywhere >= count, timeout_s, f"{count} chunks written back"
        )
    finally:
        client.close()
