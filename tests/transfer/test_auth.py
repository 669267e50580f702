"""With a cluster key every header is sealed with a MAC: a message without it, with another key's,
or altered after sealing is refused by the wire; without a key, plain headers travel as before."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from transfer import auth
from transfer.errors import WireError
from transfer.messages import AbortTask, GenerateTask, Sampling
from transfer.wire import decode, encode

KEY = bytes(range(32))
TASK = GenerateTask("r1", (1, 2, 3), Sampling(max_tokens=4), "tcp://127.0.0.1:1", None)


@pytest.fixture
def keyed():
    before = auth._key
    auth.set_key(KEY)
    yield
    auth.set_key(before)


def frames(message) -> list[bytes]:
    return [bytes(memoryview(f)) for f in encode(message)]


def test_sealed_messages_round_trip_and_forgeries_do_not(keyed):
    sealed = frames(TASK)
    assert sealed[0].startswith(auth.MAGIC) and decode(sealed).message == TASK
    tampered = bytearray(sealed[0])
    tampered[-1] ^= 1  # one bit of the header (a field) changed after sealing
    with pytest.raises(WireError, match="MAC does not match"):
        decode([bytes(tampered)])
    auth.set_key(None)
    plain = frames(TASK)
    auth.set_key(KEY)
    with pytest.raises(WireError, match="unauthenticated message"):
        decode(plain)  # what a client without the key sends
    auth.set_key(bytes(32))
    with pytest.raises(WireError, match="MAC does not match"):
        decode(sealed)  # sealed with another cluster's key


def test_without_a_key_headers_are_plain_and_sealed_ones_are_refused(keyed):
    sealed = frames(AbortTask("r2"))
    auth.set_key(None)
    plain = frames(AbortTask("r2"))
    assert not plain[0].startswith(auth.MAGIC) and decode(plain).message == AbortTask("r2")
    with pytest.raises(WireError, match="no cluster key"):
        decode(sealed)


def test_the_key_comes_from_the_environment_as_hex():
    code = "from transfer import auth; print(auth._key.hex() if auth._key else None)"
    env = {**os.environ, auth.ENV: KEY.hex()}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == KEY.hex()
    env[auth.ENV] = "not hex"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "must be hex" in bad.stderr
    with pytest.raises(ValueError, match="at least 16 bytes"):
        auth.set_key(b"short")
