"""/openapi.json describes the request bodies and OpenAI's error responses, and schemathesis,
driven by it against a live router (bounded, fixed seed), finds no server error and no status
the document does not declare."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis
import requests

from router.config import RouterConfig
from tests.router.conftest import RouterServer
from tests.router.fake_worker import FakeWorker


@pytest.fixture(scope="module")
def router(redis_server, default_model):
    redis.Redis.from_url(redis_server.url).flushall()
    worker = FakeWorker(
        redis_server.url, "c0", "colocated", model=default_model.resolve().name, max_model_len=64
    )
    worker.behaviour.reply = [28, 29, 30]
    server = RouterServer(
        RouterConfig(model_dir=default_model, redis_url=redis_server.url, refresh_interval_s=0.05)
    )
    server.wait_ready(colocated=1)
    yield server
    server.stop()
    worker.stop()


def test_the_document_declares_bodies_and_errors(router, default_model):
    doc = requests.get(f"{router.url}/openapi.json", timeout=10).json()
    post = doc["paths"]["/v1/chat/completions"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert post["requestBody"]["required"] and body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(chat["required"])
    assert chat["properties"]["model"]["enum"] == [default_model.name]  # the one model it serves
    for status in ("400", "401", "404", "413", "429", "503"):
        error = post["responses"][status]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorResponse"}


def test_schemathesis_finds_no_server_error(router):
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{router.url}/openapi.json",
         "--checks", "not_a_server_error,status_code_conformance", "--phases", "coverage,fuzzing", "-n", "25", "--seed", "7"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:]
    assert " passed" in run.stdout and "failed" not in run.stdout.split("SUMMARY")[-1]
    ok = requests.post(f"{router.url}/v1/completions", json={"model": "x", "prompt": "hi"}, timeout=10)
    assert ok.status_code == 404  # still serving, still precise
    wrong_method = requests.get(f"{router.url}/v1/completions", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
