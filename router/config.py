"""The router's configuration: frozen, validated on construction, one per process.

``RouterConfig`` holds everything the router process needs; the conductor's part of it (``CostModel``,
``Slo``) lives in ``router.conductor.config``. The membership timings (how stale a cluster view may
get, how long a worker may be missing) default to what ``worker.types.MEMBERSHIP`` derives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from router.conductor import DEFAULT_POLICY, POLICY_NAMES, CostModel, Slo
from router.conductor.profile import default_costs
from worker.types import MEMBERSHIP


@dataclass(frozen=True)
class RouterConfig:
    """Everything the router process needs.

    ``inbox`` is the address the router binds for worker events (``tcp://127.0.0.1:0`` picks a
    port); ``advertise_inbox`` the address workers reply to (default: the bound one).
    ``event_timeout_s``: a request that receives no event from its workers for this long fails
    (504); ``request_timeout_s`` (None: no limit) bounds the whole request, streamed or not: past
    it the request fails (504) and is aborted on the workers.
    ``max_in_flight`` (None: no limit) bounds the requests the router serves at once; beyond it a
    request is refused with 429 and ``Retry-After``, whatever the policy.
    ``max_retries``: how many times a request a worker failed (unreachable, lost, refused the KV)
    is routed again, to other workers, while nothing of its response has been sent.
    ``default_max_tokens`` caps chat completions that name no ``max_tokens`` (completions default
    to OpenAI's 16); either is further capped by the context left after the prompt.
    """

    model_dir: Path
    redis_url: str
    served_model_name: str = ""  # "" = the model directory's name
    policy: str = DEFAULT_POLICY
    slo: Slo = field(default_factory=Slo)
    costs: CostModel = field(default_factory=default_costs)  # the cpu-smollm2 profile's
    inbox: str = "tcp://127.0.0.1:0"
    advertise_inbox: str | None = None
    event_timeout_s: float = 120.0
    request_timeout_s: float | None = None
    max_in_flight: int | None = 1024
    refresh_interval_s: float = 0.25
    # a cluster view not refreshed for this long is unusable (503)
    stale_after_s: float = MEMBERSHIP.stale_after_s
    # while Redis cannot be read, the last view of the workers is used this long
    registry_grace_s: float = 30.0
    # a worker missing from the registry this long has failed its requests
    lost_grace_s: float = MEMBERSHIP.lost_grace_s
    send_timeout_s: float = 5.0
    default_max_tokens: int = 256
    max_retries: int = 1
    # the HTTP edge: a larger body is a 413 before it is read; one that does not arrive within
    # body_timeout_s (a client that sends less than its Content-Length) is a 408
    max_body_bytes: int = 8 << 20
    body_timeout_s: float = 30.0
    # with a key, every path but the open ones needs "Authorization: Bearer <api_key>" (else 401);
    # a path is open if it equals one of open_paths or continues one with "/"
    api_key: str | None = None
    open_paths: tuple[str, ...] = ("/health", "/metrics", "/dashboard")

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", Path(self.model_dir))
        if self.policy not in POLICY_NAMES:
            raise ValueError(f"policy must be one of {POLICY_NAMES}, got {self.policy!r}")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must look like redis://HOST:PORT, got {self.redis_url!r}")
        if not self.inbox.startswith(("tcp://", "ipc://")):
            raise ValueError(f"inbox must be a ZeroMQ address like tcp://127.0.0.1:0, got {self.inbox!r}")
        if self.lost_grace_s < 0:
            raise ValueError(f"lost_grace_s must be >= 0, got {self.lost_grace_s}")
        for name in (
            "event_timeout_s", "refresh_interval_s", "stale_after_s", "send_timeout_s", "max_body_bytes",
            "body_timeout_s", "registry_grace_s",
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.request_timeout_s is not None and self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive or None, got {self.request_timeout_s}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1 or None, got {self.max_in_flight}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.api_key is not None and (not self.api_key or self.api_key != self.api_key.strip()):
            raise ValueError("api_key must be non-empty, without surrounding whitespace")
        if self.default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {self.default_max_tokens}")

    @property
    def model_name(self) -> str:
        """The name clients pass as ``model``."""
        return self.served_model_name or self.model_dir.name
