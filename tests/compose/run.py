"""The compose test: the repository's compose.yaml on real containers, end to end.

    python -m tests.compose.run [--fresh] [--keep-up]

No image registry is reachable on the build machines, so the test makes its own base image
(debootstrap of Debian bookworm with python3, imported into podman), builds Redis and the Tandem
image (the repository's Dockerfile, ``BASE`` pointing at that base) on top of it, then runs
``podman-compose up -d`` and checks what a user would: the router's ``/health`` (and every
container's own health check), a chat answer streamed through the published port with the
``openai`` client (served by the prefill and decode containers), ``/metrics``, ``/dashboard``, and
that a crashed worker is restarted by its restart policy and serves again. Everything is brought
down (``podman-compose down``) whatever happens. Needs root, podman, runc, debootstrap and
podman-compose (``tests/compose/setup_host.sh`` installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.compose.images import BASE_IMAGE, REDIS_IMAGE, TANDEM_IMAGE, build_base_image, build_images
from tests.compose.shell import REPO, run, say

PROJECT = "tandemtest"
SERVICES = ("redis", "store", "store-decode", "prefill", "decode", "router")


def podman_compose() -> list[str]:
    for candidate in (Path(sys.executable).parent / "podman-compose", shutil.which("podman-compose")):
        if candidate and Path(candidate).is_file():
            return [str(candidate)]
    raise RuntimeError("podman-compose not found: run tests/compose/setup_host.sh")


# ---- the cluster ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def containers() -> dict[str, str]:
    """service → container name of this project's containers."""
    out = run(["podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={PROJECT}", "--format",
               '{{.Names}} {{index .Labels "com.docker.compose.service"}}'], quiet=True).stdout  # fmt: skip
    return {service: name for name, service in (line.split() for line in out.splitlines() if line.strip())}


def inspect(container: str, fmt: str) -> str:
    return run(["podman", "inspect", "--format", fmt, container], quiet=True).stdout.strip()


@contextlib.contextmanager
def compose_up(port: int) -> Iterator[None]:
    env = {**os.environ, "TANDEM_PORT": str(port), "TANDEM_REDIS_IMAGE": REDIS_IMAGE,
           "TANDEM_IMAGE": TANDEM_IMAGE}  # fmt: skip
    compose = [*podman_compose(), "-p", PROJECT, "-f", str(REPO / "compose.yaml")]
    # A leftover of an interrupted run would hold the names and the port.
    run([*compose, "down", "-t", "15"], env=env, check=False, quiet=True)
    ok = False
    try:
        run([*compose, "up", "-d", "--no-build"], env=env)
        yield
        ok = True
    finally:
        if not ok:
            for service, name in sorted(containers().items()):
                out = run(["podman", "logs", "--tail", "40", name], check=False, quiet=True)
                print(f"----- {service} ({name}) logs -----\n{out.stdout}{out.stderr}", flush=True)
        say("podman-compose down")
        run([*compose, "down", "-t", "15"], env=env, check=False, quiet=True)
        left = containers()
        if left:
            say(f"containers left behind: {left}")


def wait_for_router(url: str, timeout_s: float) -> None:
    """Until ``/health`` answers 200; every container must stay up meanwhile (restarts allowed)."""
    import requests

    deadline = time.monotonic() + timeout_s
    last_report = 0.0
    while True:
        try:
            if requests.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"{url}/health not 200 after {timeout_s:.0f}s")
        if now - last_report > 10:
            last_report = now
            states = {s: inspect(c, "{{.State.Status}}") for s, c in sorted(containers().items())}
            say(f"waiting for {url}/health: {states}")
        time.sleep(1)


def check_health_checks() -> None:
    """Run every service's compose health check once. Podman schedules health checks with systemd
    timers, which this machine does not have, so they are run here by hand."""
    found = containers()
    assert set(found) == set(SERVICES), f"services running: {sorted(found)}, expected {SERVICES}"
    for service in SERVICES:
        out = run(["podman", "healthcheck", "run", found[service]], check=False, quiet=True)
        assert out.returncode == 0, f"{service}'s health check failed: {out.stdout}{out.stderr}"
        say(f"{service}: health check passed")


def chat(url: str, prompt: str) -> str:
    """Stream a chat answer through the router with the openai client; returns the text."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120)
    model = client.models.list().data[0].id
    stream = client.chat.completions.create(
        model=model, stream=True, temperature=0.0, max_tokens=48,
        messages=[{"role": "user", "content": prompt}],
    )  # fmt: skip
    parts = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


def check_serving(url: str) -> None:
    import requests

    text = chat(url, "Why is the sky blue? Answer in one sentence.")
    say(f"streamed answer: {text!r}")
    assert text.strip(), "the streamed answer is empty"

    # The request went through both pools, reached by their service names.
    model = requests.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
    r = requests.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})  # fmt: skip
    assert r.status_code == 200, r.text
    served = (r.headers.get("x-tandem-prefill"), r.headers.get("x-tandem-decode"))
    assert served == ("prefill-0", "decode-0"), served

    r = requests.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200 and "tandem_" in r.text, f"/metrics: {r.status_code}"
    say("/metrics: 200 with tandem_ metrics")

    r = requests.get(f"{url}/dashboard", timeout=10)
    assert r.status_code == 200, f"/dashboard: {r.status_code} {r.text[:200]}"
    assert "text/html" in r.headers.get("content-type", "") and "<html" in r.text.lower(), r.text[:200]
    say("/dashboard: 200 with an HTML page")


def check_restart(url: str, timeout_s: float) -> None:
    """Kill the decode worker's process from outside (a crash, not a `podman stop`): its restart
    policy brings it back, it registers again, and the cluster answers again."""
    name = containers()["decode"]
    pid = int(inspect(name, "{{.State.Pid}}"))
    restarts = int(inspect(name, "{{.RestartCount}}"))
    say(f"crashing the decode worker (SIGKILL to pid {pid} of {name})")
    os.kill(pid, 9)
    deadline = time.monotonic() + timeout_s
    while not (
        int(inspect(name, "{{.RestartCount}}")) > restarts and inspect(name, "{{.State.Status}}") == "running"
    ):
        assert time.monotonic() < deadline, f"{name} was not restarted within {timeout_s:.0f}s"
        time.sleep(1)
    say(f"{name} restarted by its restart policy; waiting for it to serve again")
    wait_for_router(url, timeout_s)
    # The router may still route to the dead incarnation until its registration lapses: retry.
    while True:
        try:
            text = chat(url, "Name a colour.")
            break
        except Exception as e:  # openai raises its own error types; any failure here is retried
            assert time.monotonic() < deadline, f"no answer after the decode restart: {e}"
            say(f"not serving yet after the restart ({type(e).__name__}); retrying")
            time.sleep(2)
    assert text.strip(), "empty answer after the decode restart"
    say(f"answer after the restart: {text!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.compose.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--fresh", action="store_true", help="remove the test's images first (a build from scratch)"
    )
    p.add_argument("--port", type=int, default=0, help="host port for the router (default: a free one)")
    p.add_argument("--timeout-s", type=float, default=300, help="how long the cluster may take to serve")
    args = p.parse_args(argv)
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: run tests/compose/setup_host.sh (as root)")
    if args.fresh:
        for image in (TANDEM_IMAGE, REDIS_IMAGE, BASE_IMAGE):
            run(["podman", "rmi", "-f", image], check=False, quiet=True)
        run(["podman", "image", "prune", "-f"], check=False, quiet=True)
    build_base_image()
    build_images()
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    with compose_up(port):
        say(f"cluster starting; router published at {url}")
        wait_for_router(url, args.timeout_s)
        say("router /health: 200")
        check_health_checks()
        check_serving(url)
        check_restart(url, args.timeout_s)
    say("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
