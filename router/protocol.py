"""OpenAI requests → what the router sends a worker: parsed, validated, sampling fixed.

Two steps, because the context check needs the prompt's token count and the cluster's context
length: ``parse_completion`` / ``parse_chat`` read a body into a ``ParsedRequest`` (400s for
shape, type and range errors, 404 for an unknown model); ``sampling_fields`` then fixes
``max_tokens`` against the context and returns ``GenerateTask.sampling``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router.errors import ApiError
from router.validation import (
    bad,
    get_bool,
    get_grammar,
    get_int,
    get_logit_bias,
    get_number,
    get_stop,
    get_str,
    get_token_ids,
    reject_unsupported,
)
from transfer.messages import Sampling

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions
ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_N = 16  # choices per prompt
MAX_BATCH = 64  # prompts per completions request
MAX_LOGPROBS = 20  # alternatives per token (OpenAI's chat limit; vLLM's default)
_INT64 = 2**63


@dataclass(frozen=True)
class ParsedRequest:
    """A valid request. Exactly one of ``prompts`` (completions: each text or token ids; more than
    one is a batch) and ``messages`` (chat) is set. ``max_tokens`` None means "the default" (see
    ``sampling_fields``); 0 (completions with ``echo`` only) asks for the prompt alone.
    ``logprobs`` is how many alternatives each token's log-probability comes with (None: no
    logprobs); ``n`` how many choices each prompt gets."""

    model: str
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    max_tokens: int | None
    max_tokens_param: str
    sampling: dict[str, Any]  # SamplingParams fields except max_tokens and prompt_logprobs
    prompts: tuple[str | list[int], ...] | None = None
    messages: list[dict[str, Any]] | None = field(default=None)
    n: int = 1
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None  # fill-in-the-middle: the text after the completion
    continuous_usage: bool = False  # stream_options.continuous_usage_stats: usage in every chunk

    @property
    def chat(self) -> bool:
        return self.messages is not None

    @property
    def prompt_param(self) -> str:
        """The field an error about the prompt names."""
        return "messages" if self.chat else "prompt"


def prompt_too_long(request: ParsedRequest, max_model_len: int, why: str) -> ApiError:
    """OpenAI's 400 for a prompt the context cannot hold (``why``: what shows it)."""
    return ApiError(
        400, f"this model's maximum context length is {max_model_len} tokens, but {why}; shorten the prompt",
        param=request.prompt_param, code="context_length_exceeded",
    )  # fmt: skip


def check_model(model: str, served_model: str) -> None:
    """404 (OpenAI's ``model_not_found``) unless ``model`` is the one this server serves."""
    if model != served_model:
        raise ApiError(
            404, f"the model '{model}' does not exist; this server serves '{served_model}'",
            param="model", code="model_not_found",
        )  # fmt: skip


def _common(body: dict, served_model: str, vocab_size: int, *, chat: bool) -> dict[str, Any]:
    model = get_str(body, "model")
    check_model(model, served_model)
    reject_unsupported(body, chat=chat)
    stream = get_bool(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options", "'stream_options' must be an object")
    if options and not stream:
        raise bad("stream_options", "'stream_options' is only allowed when 'stream' is true")
    options = options or {}
    max_tokens, param = get_int(body, "max_tokens", lo=0), "max_tokens"
    if chat and max_tokens is None:
        max_tokens, param = get_int(body, "max_completion_tokens", lo=1), "max_completion_tokens"
    return {
        "model": model,
        "stream": stream,
        "include_usage": get_bool(options, "include_usage", False),
        "continuous_usage": get_bool(options, "continuous_usage_stats", False),
        "stop": get_stop(body),
        "max_tokens": max_tokens,
        "max_tokens_param": param,
        "sampling": _sampling(body, vocab_size),
        "n": get_int(body, "n", lo=1, hi=MAX_N) or 1,
    }


def _sampling(body: dict, vocab_size: int) -> dict[str, Any]:
    """The request's ``Sampling`` fields but ``max_tokens``, ``logprobs`` and ``prompt_logprobs``."""
    stop_ids = body.get("stop_token_ids")
    min_tokens = get_int(body, "min_tokens", lo=0) or 0
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and min_tokens > max_tokens:
        raise bad("min_tokens", f"'min_tokens' ({min_tokens}) must be <= max_tokens ({max_tokens})")
    return {
        "temperature": get_number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": get_number(body, "top_p", 1.0, 0.0, 1.0, open_lo=True),
        "top_k": get_int(body, "top_k", lo=-1, hi=vocab_size) or 0,
        "min_p": get_number(body, "min_p", 0.0, 0.0, 1.0),
        "seed": get_int(body, "seed", lo=-_INT64, hi=_INT64 - 1),
        "stop_token_ids": tuple(get_token_ids(stop_ids, "stop_token_ids", vocab_size)) if stop_ids else (),
        "ignore_eos": get_bool(body, "ignore_eos", False),
        "presence_penalty": get_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        "frequency_penalty": get_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        "repetition_penalty": get_number(body, "repetition_penalty", 1.0, 0.0, 2.0, open_lo=True),
        "logit_bias": get_logit_bias(body, vocab_size),
        "min_tokens": min_tokens,
        "grammar": get_grammar(body),
    }


def parse_completion(body: dict, served_model: str, vocab_size: int) -> ParsedRequest:
    common = _common(body, served_model, vocab_size, chat=False)
    logprobs = get_int(body, "logprobs", lo=0, hi=MAX_LOGPROBS)
    echo = get_bool(body, "echo", False)
    if common["max_tokens"] == 0 and not echo:
        raise bad("max_tokens", "'max_tokens' must be >= 1 (0 is only allowed with 'echo')")
    if echo and common["stream"] and logprobs is not None:
        raise bad("echo", "'echo' with 'logprobs' is not supported when streaming; use stream=false")
    prompts = _prompts(body.get("prompt"), vocab_size)
    suffix = get_str(body, "suffix", None)
    return ParsedRequest(prompts=prompts, logprobs=logprobs, echo=echo, suffix=suffix or None, **common)


def _prompts(prompt: Any, vocab_size: int) -> tuple[str | list[int], ...]:
    """A completion's prompt field: one text, one token-id list, or a batch of either."""
    if prompt is None:
        raise bad("prompt", "'prompt' is a required field")
    batch = isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], (str, list))
    items = prompt if batch else [prompt]
    if len(items) > MAX_BATCH:
        raise bad("prompt", f"a batch holds at most {MAX_BATCH} prompts, got {len(items)}")
    out: list[str | list[int]] = []
    for i, item in enumerate(items):
        param = f"prompt[{i}]" if batch else "prompt"
        if isinstance(item, list):
            item = get_token_ids(item, param, vocab_size)
        elif not isinstance(item, str):
            raise bad(param, f"'{param}' must be a string or an array of token ids")
        if not item:
            raise bad(param, f"'{param}' must not be empty")
        out.append(item)
    return tuple(out)


def _message(index: int, message: Any) -> dict[str, Any]:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad(param, f"'{param}' must be an object with 'role' and 'content'")
    role = get_str(message, "role")
    if role not in ROLES:
        raise bad(f"{param}.role", f"'{param}.role' must be one of {', '.join(ROLES)}, got '{role}'")
    content = message.get("content")
    if isinstance(content, list):  # content parts: text only
        if not all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        ):
            raise bad(
                f"{param}.content", "only text content parts ({'type': 'text', 'text': ...}) are supported"
            )
        content = "".join(p["text"] for p in content)
    if content is None and role != "assistant":
        raise bad(f"{param}.content", f"'{param}.content' is a required field")
    if content is not None and not isinstance(content, str):
        raise bad(f"{param}.content", f"'{param}.content' must be a string or an array of text parts")
    out: dict[str, Any] = {"role": role, "content": content}
    if isinstance(message.get("name"), str):
        out["name"] = message["name"]
    return out


def parse_chat(body: dict, served_model: str, vocab_size: int) -> ParsedRequest:
    common = _common(body, served_model, vocab_size, chat=True)
    top = get_int(body, "top_logprobs", lo=0, hi=MAX_LOGPROBS)
    wants = get_bool(body, "logprobs", False)
    if top is not None and not wants:
        raise bad("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    messages = parse_messages(body.get("messages"))
    return ParsedRequest(messages=messages, logprobs=(top or 0) if wants else None, **common)


def parse_messages(messages: Any) -> list[dict[str, Any]]:
    """A chat's ``messages``: each with a role and text content (400 naming what is wrong)."""
    if messages is None:
        raise bad("messages", "'messages' is a required field")
    if not isinstance(messages, list):
        raise bad("messages", "'messages' must be an array of messages")
    if not messages:
        raise bad("messages", "'messages' must not be empty")
    return [_message(i, m) for i, m in enumerate(messages)]


def sampling_fields(
    request: ParsedRequest, num_prompt_tokens: int, max_model_len: int, default_max_tokens: int
) -> Sampling:
    """``GenerateTask.sampling``: the request's sampling with ``max_tokens`` fixed.

    400 (code ``context_length_exceeded``) if the prompt leaves no room in the context, or if an
    explicit ``max_tokens`` does not fit after the prompt. Without one, chat completions get
    ``min(default_max_tokens, room)``, completions ``min(16, room)``. ``max_tokens`` 0 (echo
    only) generates one token the response leaves out.
    """
    room = max_model_len - num_prompt_tokens
    if room < 1:
        why = f"the prompt has {num_prompt_tokens} tokens (at least one must be left to generate)"
        raise prompt_too_long(request, max_model_len, why)
    if request.max_tokens is None:
        default = default_max_tokens if request.chat else COMPLETION_DEFAULT_MAX_TOKENS
        max_tokens = min(default, room)
    elif request.max_tokens > room:
        raise ApiError(
            400,
            f"this model's maximum context length is {max_model_len} tokens; you requested "
            f"{num_prompt_tokens + request.max_tokens} tokens ({num_prompt_tokens} in the prompt, "
            f"{request.max_tokens} for the completion): lower {request.max_tokens_param} to at most {room}",
            param=request.max_tokens_param,
            code="context_length_exceeded",
        )
    else:
        max_tokens = max(1, request.max_tokens)
    sampling = dict(request.sampling, min_tokens=min(request.sampling["min_tokens"], max_tokens))
    return Sampling(
        **sampling,
        max_tokens=max_tokens,
        logprobs=request.logprobs,
        prompt_logprobs=request.logprobs if request.echo else None,
    )
