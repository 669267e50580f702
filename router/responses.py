"""OpenAI response bodies: complete responses, streamed chunks (SSE) and usage, as the API writes them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SSE_DONE = b"data: [DONE]\n\n"
NO_USAGE: dict[str, Any] = {}  # a chunk without a "usage" key (stream_options.include_usage unset)


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


@dataclass(frozen=True)
class ResponseHead:
    """What every body of one response repeats."""

    request_id: str
    created: int
    model: str
    chat: bool

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.request_id, "object": obj, "created": self.created, "model": self.model}

    def choice(
        self, index: int, text: str, finish_reason: str | None, logprobs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One choice of a whole (non-streamed) response."""
        if self.chat:
            message = {"role": "assistant", "content": text}
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    def complete(self, choices: list[dict[str, Any]], usage_body: dict[str, Any]) -> dict[str, Any]:
        obj = "chat.completion" if self.chat else "text_completion"
        return {**self._base(obj), "choices": choices, "usage": usage_body}

    def chunk(
        self,
        index: int,
        text: str,
        finish_reason: str | None,
        *,
        first: bool = False,
        logprobs: dict[str, Any] | None = None,
        usage_body: dict[str, Any] | None = NO_USAGE,
    ) -> dict[str, Any]:
        """A streamed chunk of choice ``index``. The first chat chunk of a choice carries the role.
        ``usage_body``: ``NO_USAGE`` leaves the key out, None writes ``"usage": null`` (OpenAI's
        ``include_usage``), a dict the usage so far (``continuous_usage_stats``)."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {}
            if text and not first:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            body = {**self._base("chat.completion.chunk"), "choices": [choice]}
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
            body = {**self._base("text_completion"), "choices": [choice]}
        if usage_body is not NO_USAGE:
            body["usage"] = usage_body
        return body

    def usage_chunk(self, usage_body: dict[str, Any]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._base(obj), "choices": [], "usage": usage_body}
