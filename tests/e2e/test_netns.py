"""Two hosts without a second machine: a decode worker and its store node in a network namespace of
their own, reached over a veth link with real addresses; the router, Redis, the prefill worker, a
second decode worker and the prefill's store node stay in the test's namespace.

Requests cross the link (KV hand-off to the far decode worker, its tokens back to the router, its
heartbeats to Redis). Then the link is cut while a stream runs on the far worker: that stream fails
cleanly (an error event, not a hang), the requests the router places meanwhile on the near decode
worker complete, and once the link is back the far worker serves again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from kvstore.embedded_redis import EmbeddedRedis
from tests.e2e.procs import stop, wait_for_workers

pytestmark = pytest.mark.slow

NS = "tandem-far"
NEAR_IF, FAR_IF = "tnd-near", "tnd-far"
NEAR_IP, FAR_IP = "10.77.0.1", "10.77.0.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def link():
    """The namespace and the veth pair between it and ours; removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        if os.environ.get("CI"):
            pytest.fail("the network-namespace test needs root and iproute2 (CI has both)")
        pytest.skip("needs root and iproute2 (`ip netns`)")
    with contextlib.suppress(subprocess.CalledProcessError):  # a leftover from an interrupted run
        ip("netns", "del", NS)
    with contextlib.suppress(subprocess.CalledProcessError):
        ip("link", "del", NEAR_IF)
    ip("netns", "add", NS)
    try:
        ip("link", "add", NEAR_IF, "type", "veth", "peer", "name", FAR_IF)
        ip("link", "set", FAR_IF, "netns", NS)
        ip("addr", "add", f"{NEAR_IP}/24", "dev", NEAR_IF)
        ip("link", "set", NEAR_IF, "up")
        ip("netns", "exec", NS, "ip", "addr", "add", f"{FAR_IP}/24", "dev", FAR_IF)
        ip("netns", "exec", NS, "ip", "link", "set", FAR_IF, "up")
        ip("netns", "exec", NS, "ip", "link", "set", "lo", "up")
        yield
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("link", "del", NEAR_IF)
        ip("netns", "del", NS)


def spawn(module: str, *args: str, far: bool = False) -> subprocess.Popen:
    """A role as a child process, in the far namespace if ``far`` (``ip netns exec`` execs it: its
    PID is the role's)."""
    prefix = ["ip", "netns", "exec", NS] if far else []
    return subprocess.Popen([*prefix, sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def cluster(link, default_model, tmp_path_factory):
    redis = EmbeddedRedis(host=NEAR_IP).start()  # reachable from both namespaces
    procs: list[subprocess.Popen] = []
    common = ["--model", str(default_model), "--redis-url", redis.url, "--threads", "1", "--num-pages", "256"]
    try:

        def node(node_id: str, host: str, far: bool = False) -> None:
            procs.append(spawn("kvstore.node_main", "--redis-url", redis.url, "--listen", f"tcp://{host}:0",
                               "--node-id", node_id, "--capacity-bytes", str(256 << 20), far=far))  # fmt: skip

        node("store-p", NEAR_IP)
        node("store-near", NEAR_IP)
        node("store-far", FAR_IP, far=True)
        procs.append(spawn("prefill.main", *common, "--listen", f"tcp://{NEAR_IP}:0", "--worker-id", "prefill-0",
                           "--store-node", "store-p"))  # fmt: skip
        procs.append(spawn("decode.main", *common, "--listen", f"tcp://{NEAR_IP}:0", "--worker-id", "decode-near",
                           "--store-node", "store-near"))  # fmt: skip
        procs.append(spawn("decode.main", *common, "--listen", f"tcp://{FAR_IP}:0", "--worker-id", "decode-far",
                           "--store-node", "store-far", far=True))  # fmt: skip
        wait_for_workers(redis.url, {"prefill-0", "decode-near", "decode-far"}, procs)
        port_file = tmp_path_factory.mktemp("router") / "port"
        procs.append(spawn("router.main", "--model", str(default_model), "--redis-url", redis.url,
                           "--inbox", f"tcp://{NEAR_IP}:0", "--port", "0", "--port-file", str(port_file),
                           "--policy", "round_robin", "--log-level", "warning"))  # fmt: skip
        url = f"http://127.0.0.1:{wait_for_port(port_file, procs)}"
        wait_healthy(url)
        yield url
    finally:
        stop(procs)
        redis.stop()


def wait_for_port(path: Path, procs: list[subprocess.Popen], timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, (
            "the router did not listen"
        )
        time.sleep(0.1)
    return int(path.read_text())


def wait_healthy(url: str, workers: int = 3, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(requests.RequestException, ValueError):
            body = requests.get(f"{url}/health", timeout=5).json()
            if body["status"] == "ok" and sum(body["workers"].values()) == workers:
                return
        assert time.monotonic() < deadline, f"cluster not healthy with {workers} workers"
        time.sleep(0.2)


def complete(url: str, prompt: str, max_tokens: int = 8) -> requests.Response:
    model = requests.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    return requests.post(f"{url}/v1/completions", json=body, timeout=120)


def test_requests_cross_the_link_both_ways(cluster):
    seen = {}
    for _ in range(4):  # round robin: both decode workers
        r = complete(cluster, "The capital of France is")
        assert r.status_code == 200, r.text
        seen[r.headers["x-tandem-decode"]] = r.json()["choices"][0]["text"]
    assert set(seen) == {"decode-near", "decode-far"}
    assert seen["decode-near"] == seen["decode-far"]  # greedy: the same answer wherever it decoded


def test_a_cut_link_fails_its_stream_cleanly_and_the_rest_complete(cluster):
    model = requests.get(f"{cluster}/v1/models", timeout=10).json()["data"][0]["id"]
    body = {"model": model, "prompt": "Count: one, two,", "max_tokens": 400, "temperature": 0,
            "stream": True, "ignore_eos": True}  # fmt: skip
    far = None
    for _ in range(4):  # round robin: find the stream placed across the link
        resp = requests.post(f"{cluster}/v1/completions", json=body, stream=True, timeout=120)
        if resp.headers["x-tandem-decode"] == "decode-far":
            far = resp
            break
        resp.close()
    assert far is not None, "no request went to the far decode worker"
    lines = far.iter_lines(decode_unicode=True)
    for _ in range(3):
        next(lines)  # it streams
    ip("link", "set", NEAR_IF, "down")  # the cable is pulled
    try:
        rest = [line for line in lines if line]
        errors = [
            json.loads(line[6:])["error"] for line in rest if line.startswith("data: {") and '"error"' in line
        ]
        assert errors and errors[-1]["code"] in ("worker_lost", "timeout"), rest[-3:]
        assert rest[-1] == "data: [DONE]"
        answered = [complete(cluster, f"Say {i}") for i in range(4)]  # the far worker has lapsed
        assert all(r.status_code == 200 for r in answered), [r.text for r in answered]
        assert {r.headers["x-tandem-decode"] for r in answered} == {"decode-near"}
    finally:
        ip("link", "set", NEAR_IF, "up")
    wait_healthy(cluster, workers=3)  # the far worker heartbeats again
    deadline = time.monotonic() + 60  # and serves once the router stops avoiding it (5 s after its failure)
    while (r := complete(cluster, "Again")).headers["x-tandem-decode"] != "decode-far":
        assert r.status_code == 200 and time.monotonic() < deadline, "the far worker never served again"
    assert r.status_code == 200 and r.json()["choices"][0]["text"]
