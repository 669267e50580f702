"""The OpenAPI document's request and error schemas (``/openapi.json``, ``/docs``).

The endpoints read their bodies themselves (``router.protocol`` validates every field, with
OpenAI's error shapes), so these models only *describe* what they accept, for schema-driven
clients and tools (schemathesis, SDK generators). They are written from the same limits the
validation enforces; a test drives schemathesis from this document against a live router.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from router.protocol import MAX_BATCH, MAX_LOGPROBS, MAX_N
from router.validation import MAX_LOGIT_BIAS, MAX_STOP_CHARS

Stop = str | list[str] | None


class StreamOptions(BaseModel):
    include_usage: bool | None = Field(None, description="a last chunk carries the usage")
    continuous_usage_stats: bool | None = Field(None, description="every chunk carries the usage so far")


class JsonSchemaFormat(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    schema_: dict[str, Any] = Field(alias="schema", description="a JSON Schema object")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"] = Field(
        description="json_object / json_schema: the output is constrained by a grammar (llguidance)"
    )
    json_schema: JsonSchemaFormat | None = Field(None, description="required with type json_schema")


class _Sampling(BaseModel):
    model: str = Field(description="the served model's name (GET /v1/models)")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="-1 or 0: off; at most the vocabulary size")
    min_p: float | None = Field(None, ge=0, le=1, description="drop tokens below min_p x the top probability")
    n: int | None = Field(None, ge=1, le=MAX_N, description="choices per prompt")
    seed: int | None = Field(None, description="reproducible sampling for this request")
    stream: bool | None = None
    stream_options: StreamOptions | None = Field(None, description="only with stream: true")
    stop: Stop = Field(None, description=f"up to 16 non-empty strings of at most {MAX_STOP_CHARS} characters")
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    min_tokens: int | None = Field(None, ge=0, description="no EOS or stop token before this many tokens")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(
        None, gt=0, le=2, description="1: off (vLLM / transformers semantics)"
    )
    logit_bias: dict[str, float] | None = Field(
        None, description=f"token id → bias in [-100, 100], at most {MAX_LOGIT_BIAS} tokens"
    )
    response_format: ResponseFormat | None = None
    user: str | None = None


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | list[int] | list[str] | list[list[int]] = Field(
        description=f"text or token ids, or a batch of up to {MAX_BATCH} of either"
    )
    max_tokens: int | None = Field(
        None, ge=0, description="tokens to generate at most (capped by the context; 0 only with echo)"
    )
    echo: bool | None = Field(None, description="the prompt precedes the completion (with its logprobs)")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="top alternatives per token")
    suffix: str | None = Field(None, description="fill-in-the-middle: only models with FIM tokens")
    best_of: int | None = Field(None, ge=1, le=MAX_N, description="equal to n (choices are not ranked)")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = Field(None, description="required except for assistant messages")
    name: str | None = None


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(
        None, ge=1, description="tokens to generate at most (capped by the context)"
    )
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="needs logprobs: true")
    tool_choice: Literal["none"] | None = Field(None, description="tool calling is not supported")
    store: Literal[False] | None = None
    metadata: dict[str, str] | None = None
    service_tier: Literal["auto", "default"] | None = None
    modalities: list[Literal["text"]] | None = None


class TokenizeRequest(BaseModel):
    """POST /tokenize: exactly one of prompt and messages."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None


class DetokenizeRequest(BaseModel):
    """POST /detokenize."""

    model: str | None = None
    tokens: list[int]


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_error or server_error")
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


_ERRORS = {
    400: "invalid request (the field is in error.param)",
    401: "missing or wrong API key (with --api-key)",
    404: "unknown model",
    408: "the body did not arrive in time",
    413: "the body is over --max-body-bytes",
    429: "the conductor predicts an SLO miss, or the router serves --max-in-flight requests: retry after Retry-After",
    500: "a worker hit a bug serving the request",
    503: "no worker can serve now: retry after Retry-After",
    504: "no worker event for --event-timeout-s, or the request ran past --request-timeout-s",
}


def request_docs(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for an endpoint that takes ``model`` as its JSON body."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        },
    }


def error_responses() -> dict[int | str, dict[str, Any]]:
    """``responses`` for FastAPI: every error status with OpenAI's error body."""
    return {status: {"model": ErrorResponse, "description": text} for status, text in _ERRORS.items()}


def add_schemas(openapi: dict[str, Any], served_model: str) -> dict[str, Any]:
    """Put the request models (and what they refer to) into the document's components; ``model``
    is the one name this router serves."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for model in (CompletionRequest, ChatCompletionRequest, TokenizeRequest, DetokenizeRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        if model in (CompletionRequest, ChatCompletionRequest):
            schema["properties"]["model"]["enum"] = [served_model]
        schemas[model.__name__] = schema
    return openapi
