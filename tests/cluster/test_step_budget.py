"""`tandem up`'s step token budget reaches every worker's engine: 2,048 tokens for a colocated
worker (as vLLM's CPU `serve`), 512 for prefill and decode workers, or what --max-num-batched-tokens
says for all of them."""

from __future__ import annotations

import pytest

from cluster.cli import _up_config, build_parser
from cluster.launcher import ClusterConfig, LocalCluster
from engine.args import engine_config
from worker.cli import worker_parser


def worker_budget(default_model, *up_flags: str) -> int:
    """The step budget a worker's engine gets from `tandem up <up_flags>`."""
    up = build_parser().parse_args(["up", "--model", str(default_model), *up_flags])
    worker_args = LocalCluster(_up_config(up))._worker_args()
    parsed = worker_parser("colocated", "test", None).parse_args(worker_args)
    return engine_config(parsed, str(default_model), "cpu").max_num_batched_tokens


def test_tandem_up_gives_each_mode_its_step_budget(default_model):
    assert worker_budget(default_model, "--mode", "colocated") == 2048
    assert worker_budget(default_model) == 512  # disaggregated
    assert worker_budget(default_model, "--mode", "colocated", "--max-num-batched-tokens", "300") == 300
    assert worker_budget(default_model, "--max-num-batched-tokens", "4096") == 4096
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        ClusterConfig(model_dir=default_model, max_num_batched_tokens=0)
