"""Grammar-constrained decoding with llguidance: one ``TokenConstraint`` per constrained sequence.

The grammar arrives as the string ``router.structured.grammar_for`` built (llguidance's JSON grammar
form). Each step the sampler calls :func:`apply_masks` on the logits, then the engine calls
:meth:`TokenConstraint.accept` with the token it chose.

Invariants:
- A mask covers the model's logits width ``vocab_size``. Ids the tokenizer does not define (the
  embedding may be padded past the tokenizer) are never allowed.
- EOS is explicit: the llguidance tokenizer is given the model's EOS ids, so a mask allows them
  exactly when the grammar accepts what was generated so far, and allows only them once the
  grammar has ended (:attr:`TokenConstraint.is_finished`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import llguidance
import torch

_BITS = 32  # llguidance packs one token per bit into int32 words


class TokenConstraint:
    """The grammar state of one sequence. Built by :meth:`GrammarCompiler.compile`.

    ``accept`` advances it by one generated token; a token the grammar forbids raises
    ``ValueError`` and leaves the state unchanged. Not thread-safe: one sequence, one caller.
    """

    def __init__(
        self, matcher: llguidance.LLMatcher, vocab_size: int, num_words: int, eos_token_ids: tuple[int, ...]
    ) -> None:
        self._matcher = matcher
        self.vocab_size = vocab_size
        self.num_words = num_words
        self.eos_token_ids = eos_token_ids

    @property
    def is_finished(self) -> bool:
        """The grammar has ended: the next token may only be EOS (true also after EOS)."""
        return self._matcher.is_stopped()

    @property
    def is_accepting(self) -> bool:
        """What was generated so far is a complete match: EOS is allowed now."""
        return self._matcher.is_accepting()

    def fill_bitmask(self, row: torch.Tensor) -> None:
        """Write the allowed-next-token bitmask into ``row``: a contiguous CPU int32 tensor of
        ``num_words`` words, bit ``t % 32`` of word ``t // 32`` set iff token ``t`` is allowed."""
        if row.dtype != torch.int32 or row.device.type != "cpu" or not row.is_contiguous():
            raise ValueError(f"a bitmask row must be contiguous CPU int32, got {row.dtype} on {row.device}")
        if row.numel() != self.num_words:
            raise ValueError(f"a bitmask row needs {self.num_words} words, got {row.numel()}")
        self._matcher.unsafe_compute_mask_ptr(row.data_ptr(), self.num_words * 4)
        if self._matcher.is_error():
            raise RuntimeError(f"grammar matcher failed: {self._matcher.get_error()}")

    def allowed(self) -> torch.Tensor:
        """Bool tensor [vocab_size]: which tokens may come next."""
        row = torch.empty(self.num_words, dtype=torch.int32)
        self.fill_bitmask(row)
        return unpack_bitmask(row.unsqueeze(0), self.vocab_size)[0]

    def accept(self, token_id: int) -> None:
        """Advance by ``token_id``. ``ValueError`` (state unchanged) if the grammar forbids it.

        EOS is allowed iff the grammar accepts what came before (llguidance's ``validate_tokens``
        refuses EOS once the grammar has ended, so it is decided here)."""
        if token_id in self.eos_token_ids:
            allowed = self._matcher.is_accepting()
        else:
            allowed = 0 <= token_id < self.vocab_size and self._matcher.validate_tokens([token_id]) == 1
        if not allowed:
            raise ValueError(f"token {token_id} is not allowed by the grammar here")
        if not self._matcher.consume_token(token_id):
            raise RuntimeError(
                f"grammar matcher rejected validated token {token_id}: {self._matcher.get_error()}"
            )


class GrammarCompiler:
    """Compiles grammar strings into :class:`TokenConstraint` for one model; build one per engine.

    ``model_dir`` holds the HF tokenizer, ``vocab_size`` is the logits width (may exceed the
    tokenizer's length), ``eos_token_ids`` are the model's stop tokens. The llguidance tokenizer
    (about a second to build) is made on the first :meth:`compile`. Thread-safe.
    """

    def __init__(self, model_dir: str | Path, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        bad = [t for t in eos_token_ids if not 0 <= t < vocab_size]
        if not eos_token_ids or bad:
            raise ValueError(
                f"eos_token_ids must be non-empty ids below vocab_size {vocab_size}, got {eos_token_ids}"
            )
        self.model_dir = Path(model_dir)
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(eos_token_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    def compile(self, grammar: str) -> TokenConstraint:
        """A fresh constraint at the grammar's start. ``ValueError`` if ``grammar`` does not compile."""
        if not isinstance(grammar, str):
            raise ValueError(f"a grammar must be a str, got {type(grammar).__name__}")
        tokenizer = self._llg_tokenizer()
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"the grammar does not compile: {matcher.get_error()}")
        num_words = -(-tokenizer.vocab_size // _BITS)
        return TokenConstraint(matcher, self.vocab_size, num_words, self.eos_token_ids)

    def _llg_tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._build_tokenizer()
            return self._tokenizer

    def _build_tokenizer(self) -> llguidance.LLTokenizer:
        import llguidance.hf
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(self.model_dir))
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{self.model_dir}: a grammar needs the model's tokenizer, which did not load: {e}"
            ) from e
        # Ids from len(hf) up to the logits width decode to nothing: llguidance never allows them.
        n_vocab = max(self.vocab_size, len(hf))
        try:
            return llguidance.hf.from_tokenizer(hf, n_vocab=n_vocab, eos_token=list(self.eos_token_ids))
        except ValueError as e:
            raise ValueError(f"{self.model_dir}: llguidance needs a fast HF tokenizer: {e}") from e


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 [R, W] bitmask → bool [R, vocab_size] on the same device (W * 32 >= vocab_size)."""
    shifts = torch.arange(_BITS, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # arithmetic shift: the & 1 drops the sign bits
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_masks(logits: torch.Tensor, constraints: Sequence[TokenConstraint | None]) -> None:
    """Set the logits of tokens each row's grammar forbids to -inf, in place.

    ``logits``: [B, V] on any device, with V the constraints' ``vocab_size``; ``constraints[i]``
    is row i's constraint, or None for an unconstrained row (left untouched).
    """
    if logits.dim() != 2 or logits.shape[0] != len(constraints):
        raise ValueError(f"logits {tuple(logits.shape)} do not match {len(constraints)} constraints")
    rows = [i for i, c in enumerate(constraints) if c is not None]
    if not rows:
        return
    num_words = constraints[rows[0]].num_words
    if any(
        constraints[i].vocab_size != logits.shape[1] or constraints[i].num_words != num_words for i in rows
    ):
        raise ValueError(f"constraints built for another vocabulary than logits width {logits.shape[1]}")
    # Unconstrained rows keep every bit set, so masked_fill_ leaves them bit-identical.
    bitmask = torch.full((len(constraints), num_words), -1, dtype=torch.int32)
    for i in rows:
        constraints[i].fill_bitmask(bitmask[i])
    allowed = unpack_bitmask(bitmask.to(logits.device), logits.shape[1])
    logits.masked_fill_(~allowed, float("-inf"))
