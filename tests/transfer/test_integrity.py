"""Every buffer travels with its producer's checksum: bytes changed on the way are detected by the
receiver, which still learns which message they belonged to (so it can fail that request)."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash

from transfer.errors import CorruptBuffer
from transfer.messages import Buffer, GetReply, PutRequest
from transfer.wire import decode, encode


def flip(frame, at: int) -> bytearray:
    data = bytearray(memoryview(frame))
    data[at] ^= 0x01
    return data


def test_a_flipped_bit_in_a_buffer_is_a_corrupt_buffer_naming_its_message():
    kv = np.arange(1024, dtype=np.float32)
    frames = encode(
        PutRequest((b"k" * 32, b"j" * 32), (Buffer(kv, "float32", (1024,)), Buffer.raw(b"x" * 64))), msg_id=7
    )
    assert decode(frames).message.buffers[0].checksum == xxhash.xxh3_64_intdigest(kv)
    for i, at in ((1, 4095), (2, 0)):
        bad = list(frames)
        bad[i] = flip(frames[i], at)
        with pytest.raises(CorruptBuffer, match=rf"buffers\[{i - 1}\]") as e:
            decode(bad)
        assert e.value.msg_id == 7 and isinstance(e.value.message, PutRequest)
        assert e.value.message.keys == (b"k" * 32, b"j" * 32)


def test_a_checksum_given_by_the_producer_travels_unchanged():
    """A store node sends a chunk back with the checksum it was put with, not one of its arena's
    bytes: a change at rest is caught by the reader."""
    good = b"\x01" * 256
    at_rest = b"\x01" * 255 + b"\x02"  # what the arena holds now
    reply = GetReply((True,), (Buffer(at_rest, "uint8", (256,), checksum=xxhash.xxh3_64_intdigest(good)),))
    with pytest.raises(CorruptBuffer):
        decode(encode(reply, msg_id=1))
    intact = GetReply((True,), (Buffer(good, "uint8", (256,), checksum=xxhash.xxh3_64_intdigest(good)),))
    assert bytes(decode(encode(intact, msg_id=1)).message.buffers[0].data) == good
