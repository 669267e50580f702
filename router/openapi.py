"""The OpenAPI document's request and error schemas (``/openapi.json``, ``/docs``).

The endpoints read their bodies themselves (``router.protocol`` validates every field, with
OpenAI's error shapes), so these models only *describe* what they accept, for schema-driven
clients and tools (schemathesis, SDK generators). They are written from the same limits the
validation enforces; a test drives schemathesis from this document against a live router.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from router.validation import MAX_STOP_CHARS

Stop = str | list[str] | None


class StreamOptions(BaseModel):
    include_usage: bool | None = None


class _Sampling(BaseModel):
    model: str = Field(description="the served model's name (GET /v1/models)")
    max_tokens: int | None = Field(
        None, ge=1, description="tokens to generate at most (capped by the context)"
    )
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="-1 or 0: off; at most the vocabulary size")
    n: int | None = Field(None, ge=1, le=1, description="one sample a request")
    seed: int | None = Field(None, description="reproducible sampling for this request")
    stream: bool | None = None
    stream_options: StreamOptions | None = Field(None, description="only with stream: true")
    stop: Stop = Field(None, description=f"up to 16 non-empty strings of at most {MAX_STOP_CHARS} characters")
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    presence_penalty: float | None = Field(None, ge=0, le=0, description="only 0 is supported yet")
    frequency_penalty: float | None = Field(None, ge=0, le=0, description="only 0 is supported yet")
    user: str | None = None


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | list[int] | list[str] | list[list[int]] = Field(
        description="text or token ids (a one-element array of either is accepted too)"
    )
    echo: Literal[False] | None = Field(None, description="not supported: false or absent")
    logprobs: None = Field(None, description="not supported yet")
    suffix: None = Field(None, description="not supported")
    best_of: int | None = Field(None, ge=1, le=1)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = Field(None, description="required except for assistant messages")
    name: str | None = None


class ResponseFormat(BaseModel):
    type: Literal["text"] = Field(description="only text yet")


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: Literal[False] | None = Field(None, description="not supported yet")


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
    429: "the conductor predicts an SLO miss: retry after Retry-After",
    503: "no worker can serve now: retry after Retry-After",
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
    for model in (CompletionRequest, ChatCompletionRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schema["properties"]["model"]["enum"] = [served_model]
        schemas[model.__name__] = schema
    return openapi
