"""Wire format: every message round-trips, buffers arrive as views, and every kind of malformed
input is rejected with an error that names the problem."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest
import xxhash

from transfer.errors import WireError
from transfer.messages import (
    MESSAGE_TYPES,
    AbortTask,
    AttachReply,
    AttachRequest,
    Buffer,
    ChunkSpec,
    CommitRequest,
    DecodeTask,
    DeleteReply,
    DeleteRequest,
    ErrorReply,
    ExistsReply,
    ExistsRequest,
    GenerateTask,
    GetReply,
    GetRequest,
    InPlaceGetReply,
    InPlaceGetRequest,
    KVLayers,
    PutReply,
    PutRequest,
    ReleaseReply,
    ReleaseRequest,
    RequestFailed,
    ReserveReply,
    ReserveRequest,
    Sampling,
    StatsReply,
    StatsRequest,
    TokenEvent,
)
from transfer.wire import decode, encode


def header_of(frames: list) -> dict:
    return msgpack.unpackb(frames[0], raw=False)


def with_header(frames: list, **changes) -> list:
    header = header_of(frames)
    header.update(changes)
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def put_request() -> PutRequest:
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    return PutRequest((b"k" * 16, b"j" * 16), (Buffer(a, "float32", (2, 3, 4)), Buffer.raw(b"raw bytes")))


def test_round_trip_with_ids_and_buffers():
    frames = encode(put_request(), msg_id=7, seq=3)
    assert len(frames) == 3
    envelope = decode(frames)
    assert (envelope.msg_id, envelope.seq) == (7, 3)
    message = envelope.message
    assert isinstance(message, PutRequest) and message.keys == (b"k" * 16, b"j" * 16)
    first, second = message.buffers
    assert (first.dtype, first.shape, second.dtype, second.shape) == ("float32", (2, 3, 4), "uint8", (9,))
    assert np.array_equal(np.frombuffer(first.data, np.float32), np.arange(24, dtype=np.float32))
    assert bytes(second.data) == b"raw bytes"


def test_buffers_are_views_of_the_frames_not_copies():
    frame = bytearray(b"\x00" * 8)
    message = decode([encode(GetReply((True,), (Buffer.raw(bytes(frame)),)))[0], frame]).message
    frame[0] = 42
    assert message.buffers[0].data[0] == 42


SAMPLES = [
    ErrorReply("bad_request", "what was wrong"),
    PutRequest((b"k",), (Buffer.raw(b"v"),)),
    PutReply((True, False), 1),
    GetRequest((b"k", b"j")),
    GetReply((True, False), (Buffer.raw(b"v"),)),
    ExistsRequest((b"k",)),
    ExistsReply((False,)),
    DeleteRequest((b"k",)),
    DeleteReply((True,)),
    StatsRequest(),
    StatsReply("node", 100, 10, 10, 2, 1, 20, 5, 6, 7),
    AttachRequest(),
    AttachReply("/proc/1/fd/3", b"t" * 16, 8192),
    InPlaceGetRequest((b"k", b"j")),
    InPlaceGetReply((True, False), (4096,), (ChunkSpec("float32", (2, 3), 2**64 - 1),), 7, 30.0, b"t" * 16),
    ReserveRequest((b"k",), (ChunkSpec("uint8", (9,), 5),)),
    ReserveReply((False,), (4096,), 8, 30.0, b"t" * 16),
    CommitRequest(8),
    ReleaseRequest(7),
    ReleaseReply(True),
    GenerateTask(
        "r1",
        (1, 2, 3),
        Sampling(temperature=0.7, max_tokens=5, seed=None, stop_token_ids=(2,)),
        "tcp://127.0.0.1:5000",
        None,
    ),  # fmt: skip
    DecodeTask("r1", (1, 2, 3), 9, Sampling(ignore_eos=True), "tcp://127.0.0.1:5000", (Buffer.raw(b"kv"),)),
    DecodeTask("r1", (1, 2, 3), 9, Sampling(), "tcp://127.0.0.1:5000", (), streamed_layers=30),
    KVLayers("r1", 4, (Buffer(b"\0" * 16, "float32", (1, 2, 1, 1, 2, 1)),)),
    AbortTask("r1"),
    TokenEvent("r1", "decode-0", (4, 5), "stop", 16, 32),
    RequestFailed("r1", "prefill-0", "bad_request", "temperature must be >= 0"),
]


def test_every_message_kind_round_trips():
    assert {type(m).KIND for m in SAMPLES} == set(MESSAGE_TYPES), "add a sample for each new kind"
    for message in SAMPLES:
        decoded = decode(encode(message)).message
        assert type(decoded) is type(message)
        for f in dataclasses.fields(message):
            if f.name == "buffers":
                assert [bytes(b.data) for b in decoded.buffers] == [bytes(b.data) for b in message.buffers]
            else:
                assert getattr(decoded, f.name) == getattr(message, f.name), (message.KIND, f.name)


@pytest.mark.parametrize(
    "frames, problem",
    [
        ([], "empty message"),
        ([b"\xc1"], "not valid MessagePack"),
        ([msgpack.packb([1, 2])], "header must be a map"),
        ([msgpack.packb({"kind": "store_stats"})], "header keys wrong: missing"),
    ],
)
def test_garbage_is_rejected(frames, problem):
    with pytest.raises(WireError, match=problem):
        decode(frames)


def test_unknown_kind_and_wrong_version_are_named():
    frames = encode(StatsRequest(), msg_id=5)
    with pytest.raises(WireError, match="unknown message kind 'store_launch_missiles'") as err:
        decode(with_header(frames, kind="store_launch_missiles"))
    assert err.value.msg_id == 5  # an error reply can still reach the right request
    with pytest.raises(WireError, match="store_stats: version 9 not supported .this peer speaks 1"):
        decode(with_header(frames, version=9))


def test_missing_unexpected_and_mistyped_fields_are_named():
    frames = encode(ErrorReply("bad_request", "x"))
    with pytest.raises(WireError, match=r"missing fields \['message'\], unexpected fields \[\]"):
        decode(with_header(frames, fields={"code": "x"}))
    with pytest.raises(WireError, match=r"unexpected fields \['extra'\]"):
        decode(with_header(frames, fields={"code": "x", "message": "y", "extra": 1}))
    with pytest.raises(WireError, match="error.code: expected str, got int"):
        decode(with_header(frames, fields={"code": 1, "message": "y"}))
    stats = encode(StatsReply("n", 1, 1, 1, 1, 1, 1, 1, 1, 1))
    fields = header_of(stats)["fields"] | {"hits": True}
    with pytest.raises(WireError, match="store_stats_reply.hits: expected int, got bool"):
        decode(with_header(stats, fields=fields))
    put = encode(put_request())
    fields = header_of(put)["fields"] | {"keys": [b"k", "not bytes"]}
    with pytest.raises(WireError, match=r"store_put.keys\[1\]: expected bytes, got str"):
        decode(with_header(put, fields=fields))


def test_a_nested_struct_is_checked_field_by_field():
    task = encode(GenerateTask("r", (1,), Sampling(max_tokens=3), "tcp://127.0.0.1:1", None))
    sampling = header_of(task)["fields"]["sampling"]
    assert decode(task).message.sampling == Sampling(max_tokens=3)
    for bad, problem in [
        ({**sampling, "top_k": "5"}, r"generate_task.sampling.top_k: expected int, got str"),
        (
            {**sampling, "stop_token_ids": [1, None]},
            r"sampling.stop_token_ids\[1\]: expected int, got NoneType",
        ),
        ({k: v for k, v in sampling.items() if k != "seed"}, r"sampling: missing fields \['seed'\]"),
        ({**sampling, "beam": 2}, r"sampling: missing fields \[\], unexpected fields \['beam'\]"),
        ([1, 2], r"generate_task.sampling: expected Sampling, got list"),
    ]:
        fields = header_of(task)["fields"] | {"sampling": bad}
        with pytest.raises(WireError, match=problem):
            decode(with_header(task, fields=fields))


def test_frame_count_and_buffer_sizes_must_match_the_header():
    frames = encode(put_request())
    with pytest.raises(WireError, match="frame count mismatch: header describes 2 buffer frames, got 1"):
        decode(frames[:2])
    with pytest.raises(WireError, match="frame count mismatch: header describes 2 buffer frames, got 3"):
        decode([*frames, b"extra"])
    with pytest.raises(WireError, match=r"buffers\[1\]: frame holds 3 bytes, uint8\[9\] needs 9"):
        decode([*frames[:2], b"abc"])
    bad = header_of(frames)["buffers"]
    bad[0][0] = "complex256"
    with pytest.raises(WireError, match="unknown dtype 'complex256'"):
        decode(with_header(frames, buffers=bad))
    bad = header_of(frames)["buffers"]
    bad[1][2] = 1
    with pytest.raises(WireError, match="frame index 1, expected 2"):
        decode(with_header(frames, buffers=bad))
    with pytest.raises(WireError, match="store_stats: carries no buffers"):
        decode(
            with_header(encode(StatsRequest()), buffers=[["uint8", [1], 1, xxhash.xxh3_64_intdigest(b"x")]])
            + [b"x"]
        )
    bad = header_of(frames)["buffers"]
    bad[0] = bad[0][:3]
    with pytest.raises(WireError, match=r"descriptor must be \[dtype, shape, frame_index, checksum\]"):
        decode(with_header(frames, buffers=bad))


def test_message_invariants_are_checked_on_decode():
    frames = encode(put_request())
    fields = header_of(frames)["fields"] | {"keys": [b"only one key"]}
    with pytest.raises(WireError, match="store_put: 1 keys but 2 buffers"):
        decode(with_header(frames, fields=fields))


def test_buffer_descriptions_are_checked_when_built():
    with pytest.raises(ValueError, match="holds 8 bytes but float32\\[3\\] needs 12"):
        Buffer(b"x" * 8, "float32", (3,))
    with pytest.raises(ValueError, match="C-contiguous"):
        Buffer(np.zeros((4, 4), np.uint8)[:, ::2], "uint8", (4, 2))
    with pytest.raises(ValueError, match="unknown buffer dtype"):
        Buffer(b"x", "object", (1,))
