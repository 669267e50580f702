"""One choice's output as the response shows it: its text (after the prompt, with ``echo``), its
log-probabilities in the endpoint's form, and its token count; streamed delta by delta or whole.

``max_tokens`` 0 with ``echo`` (scoring a prompt, as lm-evaluation-harness does) generates one
token, which is left out: the choice is the prompt alone, finished for "length".
"""

from __future__ import annotations

from typing import Any

from router.admission import Choice
from router.dispatch.generation import Delta, Generation
from router.logprobs import CompletionLogprobs, TokenSpeller, chat_logprobs
from router.protocol import ParsedRequest
from router.responses import ResponseHead
from transfer.messages import TokenLogprob


class ChoiceRender:
    def __init__(self, parsed: ParsedRequest, choice: Choice, gen: Generation, speller: TokenSpeller) -> None:
        self._chat = parsed.chat
        self._index = choice.index
        self._with_logprobs = parsed.logprobs is not None
        self._prompt_only = parsed.max_tokens == 0
        self._speller = speller
        self._gen = gen
        self._completion = CompletionLogprobs(speller)
        self._prefix, self._prefix_ids, self._prefix_entries = "", (), ()
        if parsed.echo:
            prompt = parsed.prompts[choice.index // parsed.n]
            self._prefix = prompt if isinstance(prompt, str) else speller.decode(list(prompt))
            self._prefix_ids = tuple(choice.token_ids)
            entries = [None, *gen.prompt_logprobs]  # the first prompt token has no log-probability
            self._prefix_entries = tuple(entries + [None] * (len(self._prefix_ids) - len(entries)))
        self._texts: list[str] = []
        self._ids: list[int] = []
        self._entries: list[TokenLogprob | None] = []
        self.num_output_tokens = 0

    def delta(self, delta: Delta, *, first: bool = False) -> tuple[str, dict[str, Any] | None, str | None]:
        """A streamed delta as (text, logprobs object or None, finish_reason)."""
        text, ids, entries = self._take(delta)
        if first and self._prefix_ids:
            text = self._prefix + text
            ids, entries = (*self._prefix_ids, *ids), (*self._prefix_entries, *entries)
        return text, self._logprobs(ids, entries), self._finish_reason(delta.finish_reason)

    def add(self, delta: Delta) -> None:
        """Keep a delta for :meth:`choice` (the whole response)."""
        text, ids, entries = self._take(delta)
        self._texts.append(text)
        self._ids.extend(ids)
        self._entries.extend(entries)

    def choice(self, head: ResponseHead) -> dict[str, Any]:
        """The choice of a whole response, from every delta :meth:`add` kept."""
        text = self._prefix + "".join(self._texts)
        ids, entries = (*self._prefix_ids, *self._ids), (*self._prefix_entries, *self._entries)
        logprobs = self._logprobs(ids, entries)
        return head.choice(self._index, text, self._finish_reason(self._gen.finish_reason), logprobs)

    def _take(self, delta: Delta) -> tuple[str, tuple[int, ...], tuple[TokenLogprob | None, ...]]:
        if self._prompt_only:
            return "", (), ()
        self.num_output_tokens += delta.num_tokens
        entries = tuple(delta.logprobs) + (None,) * (delta.num_tokens - len(delta.logprobs))
        return delta.text, delta.token_ids, entries

    def _finish_reason(self, reason: str | None) -> str | None:
        return "length" if self._prompt_only and reason is not None else reason

    def _logprobs(
        self, ids: tuple[int, ...], entries: tuple[TokenLogprob | None, ...]
    ) -> dict[str, Any] | None:
        if not self._with_logprobs:
            return None
        if self._chat:
            return chat_logprobs(self._speller, [e for e in entries if e is not None])
        return self._completion.render(ids, entries)
