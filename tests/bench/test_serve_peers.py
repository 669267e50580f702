"""bench.serve_peers boils down vLLM's result files and compares each Tandem system with vLLM.

``data/vllm_bench_serve_openai.json`` is a result file written by ``vllm bench serve`` 0.32.0
(``--backend openai --save-result --save-detailed``, 32 requests of 128 random tokens, 32 output
tokens with ``ignore_eos``) against ``tandem up``, from before a fix to the streamed usage: four
responses reported fewer tokens than asked. Only ``generated_texts`` was blanked (random tokens).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bench.serve_peers import compare, ratio_table
from bench.vllm_cli import summarize

RESULT = json.loads((Path(__file__).parent / "data" / "vllm_bench_serve_openai.json").read_text())


def run(output_throughput: float, median_tpot_ms: float, output_lens_right: bool = True) -> dict:
    """A client run as ``run_bench_serve`` returns it, from the real file with two figures replaced."""
    result = copy.deepcopy(RESULT)
    result.update(output_throughput=output_throughput, median_tpot_ms=median_tpot_ms)
    if output_lens_right:
        result["output_lens"] = [32] * len(result["output_lens"])
    return {"client_exit": 0, **summarize(result, output_len=32)}


def test_summary_keeps_vllms_figures_and_names_each_short_response():
    summary = summarize(RESULT, output_len=32)
    assert summary["completed"] == 32 and summary["failed"] == 0 and summary["errors"] == []
    assert summary["output_throughput"] == pytest.approx(25.0275, abs=1e-4)
    assert summary["request_throughput"] == pytest.approx(0.78672, abs=1e-5)
    assert summary["median_ttft_ms"] == pytest.approx(736.83, abs=0.01)
    assert summary["p99_ttft_ms"] == pytest.approx(2228.10, abs=0.01)
    assert summary["median_tpot_ms"] == pytest.approx(124.918, abs=1e-3)
    assert summary["p99_tpot_ms"] == pytest.approx(142.823, abs=1e-3)
    assert summary["median_itl_ms"] == pytest.approx(103.589, abs=1e-3)
    # read off the file's output_lens: 1018 tokens of the 1024 asked for
    assert summary["wrong_output_lens"] == [
        {"index": 14, "output_tokens": 29},
        {"index": 21, "output_tokens": 31},
        {"index": 22, "output_tokens": 31},
        {"index": 23, "output_tokens": 31},
    ]


def test_the_bar_needs_at_least_vllms_throughput_and_no_worse_tpot():
    runs = {
        "vllm": run(20.0, 100.0),
        "faster": run(25.0, 80.0),
        "slower_tokens": run(30.0, 120.0),
        "slower": run(19.0, 90.0),
        "level": run(20.0, 100.0),
    }
    ratios = compare(runs)
    assert set(ratios) == {"faster", "slower_tokens", "slower", "level"}
    assert ratios["faster"] == {"output_throughput": 1.25, "median_tpot_ms": 0.8, "meets_bar": True}
    assert ratios["slower_tokens"]["output_throughput"] == pytest.approx(1.5)
    assert ratios["slower_tokens"]["median_tpot_ms"] == pytest.approx(1.2)
    assert ratios["slower_tokens"]["meets_bar"] is False
    assert ratios["slower"]["output_throughput"] == pytest.approx(0.95)
    assert ratios["slower"]["meets_bar"] is False
    assert ratios["level"]["meets_bar"] is True  # "no worse" includes equal
    assert "1.25x" in ratio_table(ratios) and "not met" in ratio_table(ratios)


def test_failed_requests_leave_the_bar_undecided():
    runs = {"vllm": run(20.0, 100.0), "short_outputs": run(25.0, 80.0, output_lens_right=False)}
    assert compare(runs)["short_outputs"]["meets_bar"] is None
    runs = {"vllm": run(20.0, 100.0, output_lens_right=False), "tandem": run(25.0, 80.0)}
    assert compare(runs)["tandem"]["meets_bar"] is None


def test_no_ratio_without_both_sides_measured():
    never_served = {"client_exit": None, "client_error": "did not serve: `vllm serve` exited with code 1"}
    assert compare({"vllm": never_served, "tandem": run(25.0, 80.0)}) == {}
    assert compare({"tandem": run(25.0, 80.0)}) == {}
    assert compare({"vllm": run(20.0, 100.0), "tandem": never_served}) == {}
