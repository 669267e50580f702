"""``LocalCluster.stop``: the children stop in stages (the router, the workers, the store nodes),
each stage before the next is signalled; a second ``request_stop`` signals what drains again (it
stops at once); a child that ignores SIGTERM is killed after the grace, so ``stop`` is bounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cluster.launcher import ClusterConfig, LocalCluster


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def wait_for(log: Path, line: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while line not in lines(log):
        assert time.monotonic() < deadline, f"no {line!r} in {lines(log)}"
        time.sleep(0.02)


def test_stop_goes_stage_by_stage_hurries_on_a_second_request_and_kills_the_stubborn(tmp_path):
    log = tmp_path / "stop.log"
    cluster = LocalCluster(ClusterConfig(model_dir=tmp_path))
    children = {"router": ("drain", 0), "worker": ("slow", 1), "store": ("stubborn", 2)}
    procs = {}
    for name, (mode, stage) in children.items():
        procs[name] = cluster._spawn(name, "tests.cluster.stopper", [str(log), name, mode])
        procs[name].stage = stage
    try:
        for name in children:
            wait_for(log, f"{name} ready")

        def press_ctrl_c_twice() -> None:  # once the slow worker drains: stop it at once
            wait_for(log, "worker term")
            cluster.request_stop()
            cluster.request_stop()

        presser = threading.Thread(target=press_ctrl_c_twice)
        presser.start()
        cluster.stop(timeout_s=2.0)
        presser.join(timeout=30)
    finally:
        cluster.stop(timeout_s=1.0)
    events = [line for line in lines(log) if not line.endswith("ready")]
    order = [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]  # repeats: hurried
    assert order == ["router term", "router exit", "worker term", "worker exit", "store term"], events
    assert events.count("worker term") >= 2, "the second request signals what drains again"
    assert procs["router"].popen.returncode == 0 and procs["worker"].popen.returncode == 0
    assert procs["store"].popen.returncode == -9, "the stubborn one is killed"
