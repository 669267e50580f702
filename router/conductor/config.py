"""The conductor's configuration: the coefficients of its latency predictions and the targets it
admits requests against. Frozen, validated on construction.

``CostModel``'s coefficients are fitted offline (``bench/results/transfer.json`` for the fetch
line); the prefill line is each worker's own online fit once it reports one, these defaults before;
the decode line is configured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class CostModel:
    """Linear latency models, in seconds.

    - prefill of n tokens after c cached ones: ``prefill_fixed_s + prefill_per_token_s * n
      + prefill_per_token_context_s * n * (c + n / 2)`` (the last term: attention to the prefix,
      which grows with the context; 0 where no profile measured it)
    - fetch of n cached tokens from another node: ``fetch_fixed_s + fetch_per_byte_s * n * kv_bytes_per_token``
    - reading n cached tokens that a store node holds on disk only, before it sends them:
      ``disk_fixed_s + disk_per_byte_s * n * kv_bytes_per_token``
    - one decode step on a worker running b sequences: ``max(reported step, decode_base_s) +
      decode_per_seq_s * extra + decode_per_context_token_s * the request's tokens``

    The defaults are a CPU ballpark for a ~100M-parameter model (prefill) and the fitted fetch line
    of ``bench/results/transfer.json``. ``kv_bytes_per_token`` is an override: 0 (the default)
    uses what each candidate worker publishes (``WorkerInfo.kv_bytes_per_token``); when that is 0
    too, a fetch is modelled by its fixed cost only.
    """

    prefill_fixed_s: float = 0.02
    prefill_per_token_s: float = 1e-3
    prefill_per_token_context_s: float = 0.0
    fetch_fixed_s: float = 8.1e-4
    fetch_per_byte_s: float = 5.2e-10
    disk_fixed_s: float = 0.0
    disk_per_byte_s: float = 0.0
    decode_base_s: float = 0.02
    decode_per_seq_s: float = 1e-3
    decode_per_context_token_s: float = 0.0
    kv_bytes_per_token: int = 0  # > 0: overrides what the workers publish

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # every coefficient is a time, a rate or a size
            if getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be >= 0, got {getattr(self, f.name)}")


@dataclass(frozen=True)
class Slo:
    """Latency targets. A request whose best predicted TTFT, or whose decode pool's predicted
    time between tokens, exceeds its target is rejected early (429). Defaults are generous: a
    small CPU cluster never hits them."""

    ttft_s: float = 30.0
    tbt_s: float = 5.0
    # A request that misses the TTFT SLO even on an idle worker is served there (late, but served,
    # and its prefix cached for the turns after it) while its predicted TTFT is within this many
    # times the SLO; beyond, it would hold a prefill worker for long and miss anyway: rejected.
    # 3 was the best of 2, 2.5, 3, 4 and unbounded in the simulator over both Mooncake traces
    # (README, "The conductor at Mooncake scale").
    late_factor: float = 3.0

    def __post_init__(self) -> None:
        if self.ttft_s <= 0 or self.tbt_s <= 0:
            raise ValueError(f"SLOs must be positive, got ttft_s={self.ttft_s}, tbt_s={self.tbt_s}")
        if not self.late_factor >= 1:
            raise ValueError(f"late_factor must be >= 1, got {self.late_factor}")
