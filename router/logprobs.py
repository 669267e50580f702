"""Log-probabilities as the OpenAI API writes them: the completions form (parallel arrays with
text offsets) and the chat form (one object per token, with its bytes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from transfer.messages import TokenLogprob

FLOOR = -9999.0  # what -inf becomes: JSON has no infinities (vLLM writes the same)


class TokenSpeller(Protocol):
    def decode(self, token_ids: list[int]) -> str: ...

    def token_text(self, token_id: int) -> str: ...

    def token_bytes(self, token_id: int) -> list[int]: ...


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else FLOOR


class CompletionLogprobs:
    """One choice's ``logprobs`` object of a completion, built token by token; ``text_offset`` counts
    characters from the start of the choice's text (the prompt's, with ``echo``)."""

    def __init__(self, speller: TokenSpeller) -> None:
        self._speller = speller
        self.offset = 0

    def render(self, token_ids: Sequence[int], entries: Sequence[TokenLogprob | None]) -> dict[str, Any]:
        """The object for ``token_ids`` (``entries[i]`` None: a token without a log-probability,
        the prompt's first). ``top_logprobs`` holds the top N and the chosen token, as vLLM's."""
        body: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for token_id, entry in zip(token_ids, entries, strict=True):
            text = self._speller.token_text(token_id)
            body["tokens"].append(text)
            body["text_offset"].append(self.offset)
            self.offset += len(text)
            if entry is None:
                body["token_logprobs"].append(None)
                body["top_logprobs"].append(None)
                continue
            body["token_logprobs"].append(_finite(entry.logprob))
            top = {
                self._speller.token_text(t): _finite(lp) for t, lp in zip(entry.top_ids, entry.top_logprobs)
            }
            top.setdefault(text, _finite(entry.logprob))
            body["top_logprobs"].append(top)
        return body


def chat_logprobs(speller: TokenSpeller, entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's (or chunk's) ``logprobs``: ``{"content": [...]}``, one object per token."""

    def token(token_id: int, logprob: float) -> dict[str, Any]:
        return {
            "token": speller.token_text(token_id),
            "logprob": _finite(logprob),
            "bytes": speller.token_bytes(token_id),
        }

    content = [
        {
            **token(e.token_id, e.logprob),
            "top_logprobs": [token(t, lp) for t, lp in zip(e.top_ids, e.top_logprobs)],
        }
        for e in entries
    ]
    return {"content": content}
