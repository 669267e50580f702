"""What importing the store costs: the router and the engine must not pull in more than they use."""

from __future__ import annotations

import subprocess
import sys

from tests.kvstore.procs import REPO


def modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return {name.split(".")[0] for name in out.stdout.split()}


def test_what_the_router_imports_is_torch_and_numpy_free():
    loaded = modules_after(
        "import transfer, kvstore.index\nfrom kvstore import StoreClient, NodeInfo, StoreError"
    )
    assert not {"torch", "numpy"} & loaded


def test_a_store_node_runs_without_torch():
    loaded = modules_after("import kvstore.node, kvstore.node_main, kvstore.embedded_redis")
    assert "torch" not in loaded


def test_importing_the_key_function_stays_cheap():
    loaded = modules_after("import kvstore.keys")
    assert not {"torch", "zmq", "redis", "msgpack", "transfer"} & loaded
