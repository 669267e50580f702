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

from tests.browser.cdp import Browser, CdpError, Page
from tests.browser.chromium import INSTALL_HINT, artifacts_dir, find_chromium, require_chromium

__all__ = [
    "INSTALL_HINT",
    "Browser",
    "CdpError",
    "Page",
    "artifacts_dir",
    "find_chromium",
    "require_chromium",
]
