"""Incremental detokenization and stop strings, over a byte-level stand-in tokenizer."""

from __future__ import annotations

import pytest

from router.detokenizer import TextStream


class ByteDecoder:
    """Token id = one UTF-8 byte: a character can be split across tokens, as in byte-level BPE."""

    def decode(self, token_ids: list[int]) -> str:
        return bytes(token_ids).decode("utf-8", errors="replace")


def ids(text: str) -> list[int]:
    return list(text.encode())


def run(text: str, stop: tuple[str, ...] = (), step: int = 1) -> tuple[list[str], TextStream]:
    stream = TextStream(ByteDecoder(), stop)
    tokens = ids(text)
    pieces = [stream.push(tokens[i : i + step]) for i in range(0, len(tokens), step)]
    pieces.append(stream.finish())
    return pieces, stream


def test_split_characters_are_emitted_whole():
    pieces, _ = run("aé🤖b")
    assert "".join(pieces) == "aé🤖b"
    assert [p for p in pieces if p] == ["a", "é", "🤖", "b"]


@pytest.mark.parametrize("step", [1, 3, 100])
def test_stop_string_truncates_and_is_not_returned(step):
    pieces, stream = run("Hello world. STOP and more", ("STOP",), step)
    assert "".join(pieces) == "Hello world. "
    assert stream.stopped


def test_first_of_several_stop_strings_wins():
    pieces, _ = run("one two three", ("three", "two"))
    assert "".join(pieces) == "one "


def test_a_possible_stop_prefix_is_held_back_then_released():
    stream = TextStream(ByteDecoder(), ("END",))
    assert stream.push(ids("abE")) == "ab"  # "E" may start "END"
    assert stream.push(ids("N")) == ""
    assert stream.push(ids("x")) == "ENx"  # it did not
    assert stream.push(ids("EN")) == ""
    assert stream.finish() == "EN"  # the request ended: nothing can follow
    assert not stream.stopped


def test_stop_string_spanning_a_split_character():
    pieces, stream = run("price: 5€ total", ("€ t",))
    assert "".join(pieces) == "price: 5"
    assert stream.stopped


def test_nothing_after_a_stop():
    stream = TextStream(ByteDecoder(), ("x",))
    assert stream.push(ids("abxcd")) == "ab"
    assert stream.push(ids("more")) == ""
    assert stream.finish() == ""


def test_empty_stop_string_is_rejected():
    with pytest.raises(ValueError):
        TextStream(ByteDecoder(), ("",))
