"""Finding, starting and stopping headless Chromium: a direct child of the test process
(``posix_spawn``, no shell), in a process group of its own, with a fresh profile, its DevTools pipe
on its fds 3 (commands in) and 4 (replies and events out), and its output in a log file beside the
profile.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

INSTALL_HINT = "apt-get install -y chromium"
_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")
_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
    "--no-default-browser-check", "--password-store=basic", "--remote-debugging-pipe",
)  # fmt: skip


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
    default = Path(__file__).resolve().parents[2] / "test-artifacts"  # the repository root (ignored)
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


class ChromiumProcess:
    """A running browser: its pid (also its process group), our ends of its pipe, its profile and log."""

    def __init__(self, pid: int, to_browser: int, from_browser: int, profile: Path, log_path: Path,
                 was_subreaper: bool) -> None:  # fmt: skip
        self.pid = pid
        self.to_browser = to_browser
        self.from_browser = from_browser
        self.profile = profile
        self.log_path = log_path
        self._was_subreaper = was_subreaper

    @classmethod
    def spawn(cls, executable: str) -> ChromiumProcess:
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
        return cls(pid, cmd_w, res_r, profile, log_path, was_subreaper)

    def log_tail(self, num_chars: int = 3000) -> str:
        """The end of the browser's stdout and stderr."""
        try:
            return self.log_path.read_text(errors="replace")[-num_chars:]
        except OSError as e:
            return f"(no log: {e})"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Wait for the browser to exit (then SIGTERM, then SIGKILL to its process group), reap it,
        close the pipe and remove the profile. Idempotent."""
        if self.pid:
            if not self._wait(timeout_s):
                self._signal(signal.SIGTERM)
                if not self._wait(timeout_s):
                    self._signal(signal.SIGKILL)
                    self._wait(timeout_s)
            self._signal(signal.SIGKILL)  # leftovers of its process group (zygote, renderers)
            self._reap_group(timeout_s)
            _subreaper(self._was_subreaper)
            self.pid = 0
        for fd in (self.to_browser, self.from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.to_browser = self.from_browser = -1
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
