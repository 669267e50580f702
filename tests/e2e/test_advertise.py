"""``--advertise``: a worker bound to one address publishes another (a container binds 0.0.0.0 and
is reached by its service name), and without it publishes the bound address."""

from __future__ import annotations

import pytest

from kvstore.embedded_redis import EmbeddedRedis, free_port
from tests.e2e.procs import spawn, stop, wait_for_workers
from tests.engine.conftest import build_tiny


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny("llama", tmp_path_factory.mktemp("llama"))


def test_workers_publish_the_advertised_inbox(model):
    redis = EmbeddedRedis().start()
    procs = []
    try:
        common = ["--model", str(model), "--redis-url", redis.url, "--threads", "1", "--num-pages", "32"]
        prefill_port, decode_port = free_port(), free_port()
        procs.append(spawn("prefill.main", *common, "--listen", f"tcp://127.0.0.1:{prefill_port}",
                           "--advertise", f"tcp://localhost:{prefill_port}"))  # fmt: skip
        procs.append(spawn("decode.main", *common, "--listen", f"tcp://127.0.0.1:{decode_port}"))
        prefill_id, decode_id = f"prefill@localhost:{prefill_port}", f"decode@127.0.0.1:{decode_port}"
        live = wait_for_workers(redis.url, {prefill_id, decode_id}, procs)
        assert live[prefill_id].info.address == f"tcp://localhost:{prefill_port}"
        assert live[decode_id].info.address == f"tcp://127.0.0.1:{decode_port}"
    finally:
        stop(procs)
        redis.stop()
