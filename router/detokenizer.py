"""Generated token ids → text deltas, as they arrive: incremental detokenization and stop strings.

Detokenization decodes a short window of recent tokens (vLLM's prefix/read offsets) rather than
the whole output each time; a window whose text ends in U+FFFD is an incomplete multi-byte
character and waits for the next token. Invariant: the concatenated deltas equal
``tokenizer.decode(all token ids)`` truncated before the first stop string.

Stop strings are matched in the text (OpenAI semantics: the stop string itself is not returned).
Text that could still become the start of a stop string is held back until it cannot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Decoder(Protocol):
    def decode(self, token_ids: list[int]) -> str: ...


class TextStream:
    """One request's output text. ``push`` returns the new text to send; after it returns with
    ``stopped`` set, a stop string has ended the text and later pushes return ""."""

    def __init__(self, decoder: Decoder, stop: Sequence[str] = ()) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self._decoder = decoder
        self._stop = tuple(stop)
        self.token_ids: list[int] = []
        self.text = ""  # decoded so far (truncated at a stop string once one matched)
        self.stopped = False
        self._emitted = 0  # characters of text already returned
        self._prefix_offset = 0  # window start: tokens before it are decoded into text for good
        self._read_offset = 0  # tokens up to here are in text

    def push(self, token_ids: Sequence[int]) -> str:
        """Add generated tokens; the text that became final."""
        if self.stopped:
            return ""
        self.token_ids.extend(token_ids)
        self.text += self._decode_window()
        return self._release(final=False)

    def finish(self) -> str:
        """The request ended: release what was held back (a trailing incomplete character decodes
        as U+FFFD, as a full decode would write it)."""
        if self.stopped:
            return ""
        full = self._decoder.decode(self.token_ids)
        if full.startswith(self.text):
            self.text = full
        return self._release(final=True)

    def _decode_window(self) -> str:
        window = self.token_ids[self._prefix_offset :]
        prefix_text = self._decoder.decode(self.token_ids[self._prefix_offset : self._read_offset])
        new_text = self._decoder.decode(window)
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""  # nothing new yet, or a character still split across tokens
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.token_ids)
        return new_text[len(prefix_text) :]

    def _release(self, *, final: bool) -> str:
        hits = [i for i in (self.text.find(s, self._emitted) for s in self._stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            end = len(self.text)
        elif final:
            end = len(self.text)
        else:
            end = len(self.text) - self._held_back()
        delta = self.text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return delta

    def _held_back(self) -> int:
        """Length of the longest unreleased tail that some stop string starts with."""
        pending = len(self.text) - self._emitted
        longest = max((len(s) - 1 for s in self._stop), default=0)
        for k in range(min(pending, longest), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self._stop):
                return k
        return 0
