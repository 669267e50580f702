"""The router's configuration: frozen, validated on construction, one per process.

``CostModel`` holds the coefficients of the conductor's latency predictions (fitted offline:
``bench/results/transfer.json`` for the fetch line; the prefill line is each worker's own online
fit once it reports one, these defaults before; the decode line is configured);
``Slo`` the latency targets a request is admitted against; ``RouterConfig`` everything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

POLICY_NAMES = ("cache_aware", "round_robin", "least_loaded", "prefix")

# Item size of the KV dtypes a model config may name (HF spells them "float32", "bfloat16", ...).
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}


@dataclass(frozen=True)
class CostModel:
    """Linear latency models, in seconds.

    - prefill of n tokens: ``prefill_fixed_s + prefill_per_token_s * n``
    - fetch of n cached tokens from another node: ``fetch_fixed_s + fetch_per_byte_s * n * kv_bytes_per_token``
    - one decode step on a worker running b sequences: ``max(reported step, decode_base_s) + decode_per_seq_s * extra``

    The defaults are a CPU ballpark for a ~100M-parameter model (prefill) and the fitted fetch line
    of ``bench/results/transfer.json``; ``kv_bytes_per_token`` comes from the model's config.
    """

    prefill_fixed_s: float = 0.02
    prefill_per_token_s: float = 1e-3
    fetch_fixed_s: float = 8.1e-4
    fetch_per_byte_s: float = 5.2e-10
    decode_base_s: float = 0.02
    decode_per_seq_s: float = 1e-3
    kv_bytes_per_token: int = 0  # 0: fetching is modelled as its fixed cost only

    def __post_init__(self) -> None:
        for name in ("prefill_fixed_s", "prefill_per_token_s", "fetch_fixed_s", "fetch_per_byte_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.decode_base_s < 0 or self.decode_per_seq_s < 0 or self.kv_bytes_per_token < 0:
            raise ValueError("decode_base_s, decode_per_seq_s and kv_bytes_per_token must be >= 0")


@dataclass(frozen=True)
class Slo:
    """Latency targets. A request whose best predicted TTFT, or whose decode pool's predicted
    time between tokens, exceeds its target is rejected early (429). Defaults are generous: a
    small CPU cluster never hits them."""

    ttft_s: float = 30.0
    tbt_s: float = 5.0

    def __post_init__(self) -> None:
        if self.ttft_s <= 0 or self.tbt_s <= 0:
            raise ValueError(f"SLOs must be positive, got ttft_s={self.ttft_s}, tbt_s={self.tbt_s}")


@dataclass(frozen=True)
class RouterConfig:
    """Everything the router process needs.

    ``inbox`` is the address the router binds for worker events (``tcp://127.0.0.1:0`` picks a
    port); ``advertise_inbox`` the address workers reply to (default: the bound one).
    ``request_timeout_s``: a request that receives no event for this long fails (504).
    ``max_retries``: how many times a request a worker failed (unreachable, lost, refused the KV)
    is routed again, to other workers, while nothing of its response has been sent.
    ``default_max_tokens`` caps chat completions that name no ``max_tokens`` (completions default
    to OpenAI's 16); either is further capped by the context left after the prompt.
    """

    model_dir: Path
    redis_url: str
    served_model_name: str = ""  # "" = the model directory's name
    policy: str = "cache_aware"
    slo: Slo = field(default_factory=Slo)
    costs: CostModel = field(default_factory=CostModel)
    inbox: str = "tcp://127.0.0.1:0"
    advertise_inbox: str | None = None
    request_timeout_s: float = 120.0
    refresh_interval_s: float = 0.25
    stale_after_s: float = 3.0  # a cluster view not refreshed for this long is unusable (503)
    lost_grace_s: float = 1.0  # a worker missing from the registry this long has failed its requests
    send_timeout_s: float = 5.0
    default_max_tokens: int = 256
    max_retries: int = 1

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
        for name in ("request_timeout_s", "refresh_interval_s", "stale_after_s", "send_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {self.default_max_tokens}")

    @property
    def model_name(self) -> str:
        """The name clients pass as ``model``."""
        return self.served_model_name or self.model_dir.name


def kv_bytes_per_token(model_dir: str | Path, dtype: str | None = None) -> int:
    """KV bytes one token occupies: layers x 2 (K and V) x kv heads x head dim x dtype size.

    Read from the HF ``config.json``; ``dtype`` overrides the config's own. Returns 0 when the
    config lacks a field (the conductor then models a fetch by its fixed cost only).
    """
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        kv_heads = cfg.get("num_key_value_heads") or heads
        dtype = dtype or cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
        return int(cfg["num_hidden_layers"] * 2 * kv_heads * head_dim * _DTYPE_BYTES[dtype])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
