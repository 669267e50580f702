"""Scheduler: token budget, chunked prefill, decode-first batches, FCFS, preemption by recompute."""

from __future__ import annotations

from engine.kv_cache_manager import KVCacheManager
from engine.page_pool import PagePool
from engine.scheduler import Scheduler
from engine.sequence import Sequence, Status
from engine.types import SamplingParams

PARAMS = SamplingParams(temperature=0.0, max_tokens=8)


def make(num_pages=16, page_size=4, max_seqs=8, budget=16) -> Scheduler:
    kv = KVCacheManager(PagePool(num_pages, page_size), fingerprint=b"test")
    return Scheduler(kv, max_num_seqs=max_seqs, max_num_batched_tokens=budget)


def run_step(sched: Scheduler, sample_token: int = 1):
    """What the engine does after the model runs: advance, commit, append a token where sampled."""
    batch = sched.schedule()
    for seq, n in zip(batch.seqs, batch.num_new_tokens):
        seq.num_computed_tokens += n
        sched.kv.commit(seq)
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(sample_token)
    return batch


def test_long_prompt_is_chunked_under_the_budget():
    sched = make(budget=16)
    seq = Sequence("a", list(range(40)), PARAMS)
    sched.add(seq)
    assert run_step(sched).num_new_tokens == [16]
    assert run_step(sched).num_new_tokens == [16]
    assert run_step(sched).num_new_tokens == [8]
    assert seq.num_output_tokens == 1
    assert run_step(sched).num_new_tokens == [1]


def test_decodes_come_first_and_share_the_step_with_a_prefill():
    sched = make(budget=16)
    a = Sequence("a", list(range(5)), PARAMS)
    sched.add(a)
    run_step(sched)
    b = Sequence("b", list(range(100, 130)), PARAMS)
    sched.add(b)
    batch = run_step(sched)
    assert [s.request_id for s in batch.seqs] == ["a", "b"]
    assert batch.num_new_tokens == [1, 15]


def test_fcfs_admission_respects_max_num_seqs():
    sched = make(max_seqs=2, budget=64)
    seqs = [Sequence(str(i), [i] * 3, PARAMS) for i in range(3)]
    for s in seqs:
        sched.add(s)
    batch = run_step(sched)
    assert [s.request_id for s in batch.seqs] == ["0", "1"]
    assert seqs[2].status is Status.WAITING


def test_out_of_pages_preempts_the_youngest_and_requeues_it_first():
    sched = make(num_pages=4, page_size=4, budget=64)
    old = Sequence("old", list(range(7)), PARAMS)  # 2 pages
    young = Sequence("young", list(range(50, 58)), PARAMS)  # 2 pages, full
    sched.add(old)
    sched.add(young)
    run_step(sched)
    assert sched.kv.pool.num_free_pages == 0
    # old fits its next token in its second page; young's 9th token needs a new page: preempted.
    batch = run_step(sched)
    assert [s.request_id for s in batch.seqs] == ["old"]
    assert batch.num_preempted == 1 and young.status is Status.WAITING
    assert sched.waiting[0] is young and young.block_table == [] and young.num_computed_tokens == 0


def test_readmission_hits_its_own_cached_pages():
    sched = make(num_pages=8, page_size=4, budget=64)
    seq = Sequence("a", list(range(12)), PARAMS)
    sched.add(seq)
    run_step(sched)
    sched.finish(seq, "stop")
    again = Sequence("b", list(range(12)) + [99, 98], PARAMS)
    sched.add(again)
    batch = run_step(sched)
    assert again.num_cached_tokens == 12
    assert batch.num_new_tokens == [2]
