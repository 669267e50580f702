"""The HTTP edge's error: every failure a client sees is an ``ApiError``, rendered as an
OpenAI-shaped body with its status code (``body``) and, for 429 / 503, a ``Retry-After`` hint."""

from __future__ import annotations


class ApiError(Exception):
    """A failure to report to the HTTP client as an OpenAI-shaped error with ``status``.

    ``failed_worker`` names the worker whose failure this is (dead, hung, unreachable, refused the
    KV): the dispatcher avoids it for a while and may route the request again. ``headers`` go out
    with the error response (which workers the failed attempt went to).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: int | None = None,
        failed_worker: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s
        self.failed_worker = failed_worker
        self.headers: dict[str, str] = {}

    @property
    def type(self) -> str:
        if self.status == 429:
            return "rate_limit_error"
        if self.status >= 500:
            return "server_error"
        return "invalid_request_error"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
