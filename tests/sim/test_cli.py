"""``tandem simulate`` end to end on a slice: every policy in POLICIES, JSON and plots written."""

from __future__ import annotations

import json
import subprocess
import sys

from router.conductor import POLICIES
from sim.cli import main


def test_simulate_all_policies_writes_json_and_plots(trace_slice, tmp_path, capsys):
    out = tmp_path / "sim.json"
    assert main(["--trace", str(trace_slice), "--limit", "120", "--prefill", "2", "--decode", "2",
                 "--json", str(out), "--plot", str(tmp_path / "plots")]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    assert list(report["policies"]) == list(POLICIES)
    for result in report["policies"].values():
        assert result["requests"] == 120
        assert result["completed"] + sum(result["rejected"].values()) == 120
        assert result["hit_ratio"]["total"] <= report["ceilings"]["infinite"] + 1e-9
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["hit_ratio.png", "ttft_cdf.png"]
    table = capsys.readouterr().out
    assert all(name in table for name in POLICIES) and "oracle LRU" in table


def test_the_tandem_command_runs_it_and_bad_input_is_named(trace_slice):
    ok = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "simulate", "--trace", str(trace_slice), "--limit", "20",
         "--policy", "least_loaded", "--prefill", "1", "--decode", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "least_loaded" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "simulate", "--trace", str(trace_slice), "--policy", "fastest"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "unknown policy 'fastest'" in bad.stderr
