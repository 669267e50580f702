"""Fit the ``cpu-smollm2`` cost profile from this machine's benchmark results.

Reads ``bench/results/engine.json`` (prefill throughput at 512-token prompts; decode step times at
batch 32 and 64) and ``bench/results/transfer.json`` (the fitted store fetch line) and writes
``router/conductor/profiles/cpu-smollm2.json``: the simulator's profile and the router's default
costs. ``bench.engine``, ``bench.transfer`` and ``bench.handoff`` call ``write_profile()`` after
writing their results, so the profile always follows the latest measurements.

What the results determine, and what they cannot:
- prefill: one throughput point, so the line goes through the origin (``fixed_s`` 0); the context
  term is not separable from one prompt length (0). The router replaces the line with each
  worker's own online fit once it has one.
- decode: two batch sizes at equal context give the base and per-sequence costs; the context term
  is not separable from them (0).
- fetch: the transfer benchmark's fitted line (fixed latency, seconds per byte).
- handoff: with ``bench/results/handoff.json``, the prefill → decode cost a request is exposed to
  at the default layer-wise setting (4 layers a message; the rest hides behind the prefill's
  forward), as a line through the fetch latency and that one measured point (its prompt length);
  without it, the fetch line (the same ZeroMQ path, nothing hidden).

    python -m bench.profile_fit       # rewrite the profile from the current results
"""

from __future__ import annotations

import json
from pathlib import Path

from worker.base import DEFAULT_HANDOFF_LAYERS

RESULTS = Path(__file__).resolve().parent / "results"
PROFILE = Path(__file__).resolve().parents[1] / "router" / "conductor" / "profiles" / "cpu-smollm2.json"

# SmolLM2-135M in float32: 30 layers x (K, V) x 3 KV heads x 64 dims x 4 bytes.
KV_BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 4
STORE_NODE_BYTES = 1 << 30  # `tandem up`'s default --store-capacity


def fit(engine: dict, transfer: dict, handoff: dict | None = None) -> dict:
    """The profile's JSON object from the results objects (``handoff`` optional)."""
    per_token_s = 1.0 / engine["prefill"]["tokens_per_s"]
    (small, large) = sorted(engine["decode"], key=lambda row: row["batch"])[:2]
    per_seq_s = (large["step_ms_p50"] - small["step_ms_p50"]) / 1000 / (large["batch"] - small["batch"])
    base_s = max(0.0, small["step_ms_p50"] / 1000 - per_seq_s * small["batch"])
    fetch = transfer["fetch_cost_model"]
    disk = transfer.get("disk", {}).get("disk_cost_model")
    profile = {
        "name": "cpu-smollm2",
        "description": f"{engine['model']} on {engine['machine']['threads']} CPU threads, fitted by bench/profile_fit.py",
        "sources": ["bench/results/engine.json", "bench/results/transfer.json"],
        "derivation": [
            f"prefill.per_token_s = 1 / {engine['prefill']['tokens_per_s']:.1f} tok/s (8 x 512-token prompts)",
            f"decode: step p50 {small['step_ms_p50']:.0f} ms at batch {small['batch']}, "
            f"{large['step_ms_p50']:.0f} ms at batch {large['batch']} (context ~{small['prompt_len']})",
            "fetch: transfer.json fetch_cost_model; handoff: the same ZeroMQ path",
            "context terms: not separable from these rows (0)",
        ],
        "prefill": {"fixed_s": 0.0, "per_token_s": per_token_s, "per_token_context_s": 0.0, "max_batched_tokens": 512},
        "decode": {"base_s": base_s, "per_seq_s": per_seq_s, "per_context_token_s": 0.0, "max_num_seqs": 64},
        "kv": {
            "bytes_per_token": KV_BYTES_PER_TOKEN, "chunk_tokens": 64,
            "cache_tokens_per_instance": 65536, "store_tokens_per_node": STORE_NODE_BYTES // KV_BYTES_PER_TOKEN,
        },
        "fetch": {"latency_s": fetch["fixed_s"], "bytes_per_s": 1.0 / fetch["per_byte_s"]},
        "handoff": {"latency_s": fetch["fixed_s"], "bytes_per_s": 1.0 / fetch["per_byte_s"]},
        "slo": {"ttft_s": 5.0, "tbt_s": 0.3},
    }  # fmt: skip
    row = (handoff or {}).get("results", {}).get("auto", {}).get(str(DEFAULT_HANDOFF_LAYERS))
    exposed_s = row and row["median"]["handoff_s"]
    if exposed_s and exposed_s > fetch["fixed_s"]:  # a hand-off slower than the fetch's fixed cost
        tokens = row["requests"][0]["prompt_tokens"]
        rate = tokens * KV_BYTES_PER_TOKEN / (exposed_s - fetch["fixed_s"])
        profile["handoff"] = {"latency_s": fetch["fixed_s"], "bytes_per_s": rate}
        profile["sources"].append("bench/results/handoff.json")
        profile["derivation"][2] = (
            f"fetch: transfer.json fetch_cost_model; handoff: {exposed_s * 1e3:.1f} ms exposed for a "
            f"{tokens}-token prompt at {DEFAULT_HANDOFF_LAYERS} layers a message (handoff.json), over "
            "the fetch latency"
        )
    if disk:  # a store node's disk tier: the cold read line of bench.transfer
        profile["disk"] = {"latency_s": disk["fixed_s"], "bytes_per_s": 1.0 / disk["per_byte_s"]}
        profile["derivation"].append(
            "disk: transfer.json disk.disk_cost_model (cold reads, disk hit vs memory hit)"
        )
    return profile


def write_profile(results: Path = RESULTS, out: Path = PROFILE) -> Path:
    engine = json.loads((results / "engine.json").read_text())
    transfer = json.loads((results / "transfer.json").read_text())
    handoff_path = results / "handoff.json"
    handoff = json.loads(handoff_path.read_text()) if handoff_path.is_file() else None
    out.write_text(json.dumps(fit(engine, transfer, handoff), indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(f"wrote {write_profile()}")
