"""The soak benchmark finds ``tandem up``'s children by role name in /proc, and reads their RSS."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.cluster_proc import children, rss_bytes


def test_children_are_named_by_their_role_flags():
    code = "import sys; sys.stdin.read()"  # runs until its stdin closes
    procs = [
        subprocess.Popen([sys.executable, "-c", code, "--worker-id", "prefill-7"], stdin=subprocess.PIPE),
        subprocess.Popen([sys.executable, "-c", code, "--node-id", "store-3"], stdin=subprocess.PIPE),
    ]
    try:
        found = children(os.getpid())
        assert found["prefill-7"] == procs[0].pid and found["store-3"] == procs[1].pid
        assert rss_bytes(procs[0].pid) > 1 << 20  # a Python interpreter holds megabytes
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()
    assert "prefill-7" not in children(os.getpid())
