"""The Chrome DevTools Protocol on the browser's pipe: NUL-terminated JSON commands out, replies
and events in; ``Page`` is one tab attached in flat mode."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import time
from pathlib import Path
from typing import Any

from tests.browser.chromium import ChromiumProcess, require_chromium


class CdpError(RuntimeError):
    """A DevTools command failed, timed out, or the browser went away."""


class Browser:
    """A headless Chromium and the DevTools protocol on its pipe; events are kept in ``events``."""

    def __init__(self, process: ChromiumProcess) -> None:
        self.process = process
        self._out = process.to_browser
        self._in = process.from_browser
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    @classmethod
    def launch(cls, executable: str | None = None, timeout_s: float = 30.0) -> Browser:
        browser = cls(ChromiumProcess.spawn(executable or require_chromium()))
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
        return self.process.log_tail(num_chars)

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
        """Close the browser (politely, then by signal, see ``ChromiumProcess.stop``) and reap it."""
        if self.process.pid:
            with contextlib.suppress(CdpError, OSError):
                self.call("Browser.close", timeout_s=2)
        self.process.stop(timeout_s)
        self._out = self._in = -1

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
