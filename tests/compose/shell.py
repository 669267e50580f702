"""Running commands for the compose test, with timestamps that show where the minutes go."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
START = time.monotonic()


def say(text: str) -> None:
    print(f"[compose-test {time.monotonic() - START:6.0f}s] {text}", flush=True)


def run(cmd: list[str], *, check: bool = True, quiet: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd``; its output streams through unless ``quiet`` (then it is captured and returned)."""
    if not quiet:
        say("$ " + shlex.join(cmd))
    capture = {"capture_output": True, "text": True} if quiet else {}
    out = subprocess.run(cmd, **capture, **kw)
    if check and out.returncode != 0:
        detail = f"\n{out.stdout}{out.stderr}" if quiet else ""
        raise RuntimeError(f"{shlex.join(cmd)} exited with {out.returncode}{detail}")
    return out
