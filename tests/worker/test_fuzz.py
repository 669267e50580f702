"""Every worker role survives what a peer can send it: messages that pass the wire's validation but
carry wrong values (token ids outside the vocabulary, NaN temperatures, negative or huge lengths,
KV of any dtype and shape, addresses nobody listens on, kinds meant for another role). For each,
``handle`` and the steps after it raise nothing, every task is answered or failed to its reply
address, and once every request is aborted no KV page is held.

The workers run in this process (an engine on a tiny random model, no store), as their loop would
drive them; replies go to a real inbox. Hypothesis draws the messages (bounded examples: CI runs
them all).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from colocated.worker import ColocatedWorker
from decode.worker import DecodeWorker
from engine import LLM
from prefill.worker import PrefillWorker
from tests.engine.conftest import build_tiny
from transfer.channel import Inbox
from transfer.errors import WireError
from transfer.messages import (
    DTYPE_ITEMSIZE,
    AbortTask,
    Buffer,
    DecodeTask,
    GenerateTask,
    RequestFailed,
    Sampling,
    TokenEvent,
)
from transfer.wire import decode, encode
from worker.types import WorkerInfo

VOCAB = 301  # the tiny llama's
PAGE = 8
INT64 = st.integers(-(2**63), 2**63 - 1)
ROLES = {"prefill": PrefillWorker, "decode": DecodeWorker, "colocated": ColocatedWorker}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny("llama", tmp_path_factory.mktemp("fuzz-llama"))


@pytest.fixture(scope="module")
def inbox():
    box = Inbox("tcp://127.0.0.1:0")
    yield box
    box.close()


@pytest.fixture(scope="module", params=sorted(ROLES))
def worker(request, model):
    engine = LLM(str(model), page_size=PAGE, num_pages=48).engine
    role = request.param
    info = WorkerInfo(
        worker_id=f"{role}-fuzz", role=role, address="tcp://127.0.0.1:1", model="tiny",
        fingerprint=engine.fingerprint.hex(), page_size=PAGE, chunk_tokens=16, max_model_len=engine.max_model_len,
    )  # fmt: skip
    w = ROLES[role](engine, info)
    yield w
    w.close()


def tokens() -> st.SearchStrategy[tuple[int, ...]]:
    """Mostly valid prompts (so that the deep paths run), sometimes with ids no vocabulary has."""
    good = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=40)
    wild = st.lists(st.one_of(st.integers(0, VOCAB - 1), INT64), max_size=40)
    return st.one_of(good, good, good, wild).map(tuple)


def samplings() -> st.SearchStrategy[Sampling]:
    """Mostly valid sampling, sometimes anything the wire's types allow."""
    valid = st.builds(
        Sampling, temperature=st.floats(0, 2), top_p=st.floats(0.05, 1), top_k=st.integers(0, 50),
        max_tokens=st.integers(1, 16), seed=st.one_of(st.none(), st.integers(0, 2**31)),
        stop_token_ids=st.lists(st.integers(0, VOCAB - 1), max_size=3).map(tuple), ignore_eos=st.booleans(),
        logprobs=st.one_of(st.none(), st.integers(0, 5)),
    )  # fmt: skip
    floats = st.one_of(st.floats(-3, 3), st.floats(allow_nan=True, allow_infinity=True))
    wild = st.builds(
        Sampling, temperature=floats, top_p=floats, top_k=st.one_of(st.integers(-3, 400), INT64),
        max_tokens=st.one_of(st.integers(-3, 24), INT64), seed=st.one_of(st.none(), INT64),
        stop_token_ids=tokens(), ignore_eos=st.booleans(), logprobs=st.one_of(st.none(), st.integers(-3, 30)),
    )  # fmt: skip
    return st.one_of(valid, valid, wild)


@st.composite
def kv_buffers(draw, num_tokens: int) -> Buffer:
    """KV of a random dtype and shape, or of this engine's exact layout (so that it is admitted)."""
    if draw(st.booleans()):
        dtype, shape = "float32", (3, 2, 2, max(1, math.ceil(num_tokens / PAGE)), PAGE, 12)
    else:
        dtype = draw(st.sampled_from(sorted(DTYPE_ITEMSIZE)))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=6)))
    data = np.zeros(math.prod(shape) * DTYPE_ITEMSIZE[dtype], dtype=np.uint8)
    return Buffer(data, dtype, shape)


@st.composite
def messages(draw, reply_to: str, nowhere: str):
    rid = draw(st.sampled_from(["r0", "r1", "r2", ""]))
    address = draw(st.sampled_from([reply_to, reply_to, nowhere, "not an address"]))
    kind = draw(st.sampled_from(["generate", "generate", "decode", "decode", "abort", "event"]))
    if kind == "generate":
        decode_to = draw(st.sampled_from([None, nowhere, "garbage"]))
        return GenerateTask(rid, draw(tokens()), draw(samplings()), address, decode_to)
    if kind == "decode":
        ids = draw(tokens())
        return DecodeTask(rid, ids, draw(INT64), draw(samplings()), address, (draw(kv_buffers(len(ids))),))
    if kind == "abort":
        return AbortTask(rid)
    return TokenEvent(rid, "someone", draw(tokens()), draw(st.sampled_from([None, "stop", "what"])))


def over_the_wire(message):
    """The message as a worker's inbox would hand it over (None: the wire refuses it)."""
    try:
        return decode([bytes(memoryview(f)) for f in encode(message)]).message
    except WireError:
        return None


def drain(worker, inbox) -> list:
    """Step the worker until it has nothing to do (bounded), flush its sends, collect the replies."""
    for _ in range(400):
        if not worker.has_work():
            break
        worker.step()
        worker.flush()
    worker.flush()
    replies = []
    while (message := inbox.recv(0.05 if worker.outboxes.num_queued else 0)) is not None:
        replies.append(message)
    return replies


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_worker_survives_every_well_formed_message(worker, inbox, tmp_path_factory, data):
    nowhere = f"ipc://{tmp_path_factory.getbasetemp()}/nobody-listens"
    batch = [over_the_wire(data.draw(messages(inbox.address, nowhere))) for _ in range(3)]
    batch = [m for m in batch if m is not None]
    assume(batch)
    for message in batch:
        worker.handle(message)  # must not raise
    drain(worker, inbox)
    for rid in ("r0", "r1", "r2", ""):
        worker.handle(AbortTask(rid))
    drain(worker, inbox)
    engine = worker.engine
    assert not engine.has_unfinished()
    assert engine.pool.num_used_pages == 0, f"{engine.pool.num_used_pages} pages leaked by {batch}"


def test_a_wrong_task_is_failed_to_its_sender_with_the_reason(worker, inbox):
    """Not only no crash: the sender hears why (here, a token id outside the vocabulary)."""
    sampling = Sampling(temperature=0.0, max_tokens=4)
    if worker.info.role == "decode":
        kv = Buffer(np.zeros(4, dtype=np.float32), "float32", (4,))
        task = DecodeTask("bad", (1, 2, 3), 5, sampling, inbox.address, (kv,))
    else:
        task = GenerateTask("bad", (1, VOCAB + 5), sampling, inbox.address, None)
    worker.handle(task)
    replies = drain(worker, inbox)
    while not replies:
        worker.flush()
        replies = [m for m in [inbox.recv(0.2)] if m is not None]
    (failed,) = replies
    assert isinstance(failed, RequestFailed) and failed.request_id == "bad" and failed.code == "bad_request"
