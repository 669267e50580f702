"""``LocalCluster.supervise``: a child that exits is restarted after a backoff that doubles over
consecutive quick deaths (1, 2, 4 ... 30 s) and starts over once a run lasted long enough."""

from __future__ import annotations

import logging

import pytest

from cluster import launcher
from cluster.launcher import ClusterConfig, LocalCluster


def test_a_dying_child_is_restarted_with_a_doubling_backoff(tmp_path, caplog, monkeypatch):
    clock = {"now": 1000.0}
    monkeypatch.setattr(launcher.time, "monotonic", lambda: clock["now"])
    cluster = LocalCluster(ClusterConfig(model_dir=tmp_path))
    proc = cluster._spawn("crasher", "json.tool", [str(tmp_path / "missing.json")])  # exits with 2
    pids = [proc.pid]
    caplog.set_level(logging.INFO, logger="tandem.up")
    try:
        for expected_backoff in (1.0, 2.0, 4.0, 8.0):
            proc.popen.wait()
            cluster.supervise()  # notices the death, schedules the restart
            assert proc.restart_at == clock["now"] + expected_backoff
            cluster.supervise()  # not yet
            assert proc.pid == pids[-1]
            clock["now"] += expected_backoff
            cluster.supervise()  # restarted, same command line
            assert proc.pid != pids[-1] and proc.restart_at is None
            pids.append(proc.pid)
        proc.popen.wait()
        clock["now"] += launcher.STABLE_AFTER_S  # it ran long enough this time: back to 1 s
        cluster.supervise()
        assert proc.restart_at == clock["now"] + 1.0
    finally:
        cluster.stop()
    assert f"crasher (pid {pids[0]}) exited with code 2; restarting it in 1 s" in caplog.text
    assert f"restarted crasher (pid {pids[1]})" in caplog.text


def test_the_backoff_is_capped():
    assert launcher.RESTART_BACKOFF_S[-1] == 30.0
    assert list(launcher.RESTART_BACKOFF_S) == sorted(launcher.RESTART_BACKOFF_S)
    with pytest.raises(ValueError, match="chunk_tokens"):
        ClusterConfig(model_dir="m", chunk_tokens=8)
