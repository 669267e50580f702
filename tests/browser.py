"""Headless Chromium for tests, driven over the Chrome DevTools Protocol on a pipe.

Chromium runs as a direct child of the test process (``posix_spawn``, no shell) with
``--remote-debugging-pipe``: it reads NUL-terminated JSON commands on its fd 3 and writes replies
and events on its fd 4, so no port, no websocket library. ``Browser.stop()`` closes it by PID
(its own process group, so renderers go too) and removes the fresh profile directory.

    with Browser.launch() as browser:
        page = browser.new_page(width=1400, height=1000)
        page.navigate("http://127.0.0.1:8000/dashboard")
        page.wait_for("document.body.dataset.state === 'live'")
        page.screenshot(path)
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import json
import os
import select
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

INSTALL_HINT = "apt-get install -y chromium"
_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")
_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
    "--no-default-browser-check", "--password-store=basic", "--remote-debugging-pipe",
)  # fmt: skip


class CdpError(RuntimeError):
    """A DevTools command failed, timed out, or the browser went away."""


def find_chromium() -> str | None:
    """The browser binary: Debian's real one (not its shell wrapper), else the first on PATH."""
    for name in _CANDIDATES:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.access(path, os.X_OK):
            return path
    return None


def require_chromium() -> str:
    """The browser binary, or skip the test (fail it under CI, which installs the browser)."""
    path = find_chromium()
    if path is None:
        message = f"headless Chromium not found; install it with: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def artifacts_dir() -> Path:
    """Where tests keep screenshots: ``$TANDEM_TEST_ARTIFACTS``, else ``test-artifacts/`` in the repo."""
    default = Path(__file__).resolve().parents[1] / "test-artifacts"
    path = Path(os.environ.get("TANDEM_TEST_ARTIFACTS") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37


def _subreaper(enable: bool | None = None) -> bool:
    """Whether this process adopts its orphaned descendants (Linux ``prctl``); set it if asked.

    Chromium's helper processes outlive the browser by a moment; adopted, we can reap them instead
    of leaving zombies to a PID 1 that may never wait for them (as in some containers)."""
    libc = ctypes.CDLL(None, use_errno=True)
    value = ctypes.c_int(0)
    libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0)
    if enable is not None:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, int(enable), 0, 0, 0)
    return bool(value.value)


def _high_fd(fd: int) -> int:
    """``fd`` moved to a number >= 10, so that mapping it onto the child's 3 and 4 cannot collide."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    def __init__(self, pid: int, to_browser: int, from_browser: int, profile: Path, log_path: Path,
                 was_subreaper: bool) -> None:  # fmt: skip
        self.pid = pid
        self._was_subreaper = was_subreaper
        self._out = to_browser
        self._in = from_browser
        self._buffer = b""
        self._next_id = 0
        self.profile = profile
        self.log_path = log_path
        self.events: list[dict] = []

    @classmethod
    def launch(cls, executable: str | None = None, timeout_s: float = 30.0) -> Browser:
        executable = executable or require_chromium()
        profile = Path(tempfile.mkdtemp(prefix="tandem-chromium-"))
        log_path = profile.parent / f"{profile.name}.log"
        cmd_r, cmd_w = (_high_fd(fd) for fd in os.pipe())
        res_r, res_w = (_high_fd(fd) for fd in os.pipe())
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            (os.POSIX_SPAWN_DUP2, cmd_r, 3),
            (os.POSIX_SPAWN_DUP2, res_w, 4),
        ]
        argv = [executable, *_FLAGS, f"--user-data-dir={profile}", "about:blank"]
        was_subreaper = _subreaper(True)
        try:
            pid = os.posix_spawn(executable, argv, os.environ, file_actions=actions, setsid=True)
        except BaseException:
            for fd in (cmd_r, cmd_w, res_r, res_w):
                os.close(fd)
            shutil.rmtree(profile, ignore_errors=True)
            log_path.unlink(missing_ok=True)
            _subreaper(was_subreaper)
            raise
        os.close(cmd_r)
        os.close(res_w)
        browser = cls(pid, cmd_w, res_r, profile, log_path, was_subreaper)
        try:
            browser.call("Browser.getVersion", timeout_s=timeout_s)
        except BaseException:
            browser.stop()
            raise
        return browser

    # -- the protocol ------------------------------------------------------------------------
    def call(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout_s: float = 30.0) -> dict:  # fmt: skip
        """Send one command and wait for its reply; events that arrive meanwhile go to ``events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data) :]
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CdpError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, *, session: str | None, since: int, timeout_s: float = 30.0) -> dict:
        """The first event ``method`` (of ``session``) at or after ``events[since]``, reading on if needed."""
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events[since:]:
                if event["method"] == method and event.get("sessionId") == session:
                    return event
            since = len(self.events)
            message = self._read(deadline, f"waiting for {method}")
            if "method" in message:
                self.events.append(message)

    def _read(self, deadline: float, method: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CdpError(f"{method}: no reply in time; the browser's log ends:\n{self.log_tail()}")
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise CdpError(f"{method}: the browser closed the pipe; its log ends:\n{self.log_tail()}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def log_tail(self, num_chars: int = 3000) -> str:
        """The end of the browser's stdout and stderr (they go to a file beside its profile)."""
        try:
            return self.log_path.read_text(errors="replace")[-num_chars:]
        except OSError as e:
            return f"(no log: {e})"

    def new_page(self, width: int = 1400, height: int = 1000) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, target)
        page.call("Page.enable")
        page.call("Runtime.enable")
        page.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})  # fmt: skip
        return page

    # -- lifetime ----------------------------------------------------------------------------
    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the browser (politely, then SIGTERM, then SIGKILL to its process group) and reap it."""
        if self.pid:
            with contextlib.suppress(CdpError, OSError):
                self.call("Browser.close", timeout_s=2)
            if not self._wait(timeout_s):
                self._signal(signal.SIGTERM)
                if not self._wait(timeout_s):
                    self._signal(signal.SIGKILL)
                    self._wait(timeout_s)
            self._signal(signal.SIGKILL)  # leftovers of its process group (zygote, renderers)
            self._reap_group(timeout_s)
            _subreaper(self._was_subreaper)
            self.pid = 0
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._out = self._in = -1
        shutil.rmtree(self.profile, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)  # setsid made the browser's PID its process group id

    def _reap_group(self, timeout_s: float) -> None:
        """Wait for the adopted helpers of the browser's process group (all were sent SIGKILL)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-self.pid, os.WNOHANG)
            except ChildProcessError:
                return  # none left
            if not pid:
                time.sleep(0.02)

    def _wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid:
                return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Page:
    """One tab, attached in flat mode: commands carry its session id."""

    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target

    def close(self) -> None:
        self.browser.call("Target.closeTarget", {"targetId": self.target})

    def call(self, method: str, params: dict | None = None, timeout_s: float = 30.0) -> dict:
        return self.browser.call(method, params, session=self.session, timeout_s=timeout_s)

    def navigate(self, url: str, timeout_s: float = 30.0) -> None:
        """Open ``url`` and wait until the document has loaded."""
        since = len(self.browser.events)
        result = self.call("Page.navigate", {"url": url}, timeout_s=timeout_s)
        if result.get("errorText"):
            raise CdpError(f"navigating to {url}: {result['errorText']}")
        self.browser.wait_event("Page.loadEventFired", session=self.session, since=since, timeout_s=timeout_s)

    def evaluate(self, expression: str, timeout_s: float = 30.0) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout_s=timeout_s)  # fmt: skip
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            error = details.get("exception", {}).get("description", details)
            raise CdpError(f"{expression!r} threw: {error}")
        value = result["result"]
        if "unserializableValue" in value:  # NaN, Infinity, -Infinity, -0, bigints
            return float(value["unserializableValue"].rstrip("n"))
        return value.get("value")

    def wait_for(self, expression: str, timeout_s: float = 30.0, interval_s: float = 0.1) -> Any:
        """Poll ``expression`` until it is truthy; return that value. Raises ``TimeoutError``."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still falsy after {timeout_s}s: {expression}")
            time.sleep(interval_s)

    def errors(self) -> list[str]:
        """Uncaught exceptions and console.error messages the page has produced so far."""
        out = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                out.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        return out

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the viewport to ``path``."""
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path
