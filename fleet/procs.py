"""Child processes that die with their parent and stop in order."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Child", "child_preexec", "children_of", "pid_alive"]

_PR_SET_PDEATHSIG = 1


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (one we may not signal counts as running;
    a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:
        return ") Z" not in Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return not Path("/proc").is_dir()  # no /proc to ask: kill(0) said it runs


def children_of(pid: int | None) -> list[int]:
    """Pids of a process's direct children, from /proc (empty when it is gone, or not on Linux): a
    prefork worker's pool processes."""
    if not pid:
        return []
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def child_preexec() -> None:
    """Runs in the child before exec: on Linux, SIGTERM it when the parent dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One supervised process with its output in a log file, in a session of its own.

    Its own session keeps a terminal's Ctrl-C away from it, so the supervisor decides the order
    of shutdown (workers drain first, the broker stops last).
    """

    def __init__(self, name: str, argv: Sequence[str], *, env: dict[str, str], log_file: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self, *, capture_stdout: bool = False) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture_stdout else log,
                stderr=log,
                start_new_session=True,
                preexec_fn=child_preexec,
            )
        finally:
            log.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def wait(self, timeout: float) -> bool:
        """True when the process has exited within ``timeout`` seconds."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL to the whole process group after ``grace`` seconds."""
        if not self.alive():
            self._reap_group()
            return
        self.signal(signal.SIGTERM)
        if not self.wait(grace):
            self.signal(signal.SIGKILL)
            self.wait(5)
        self._reap_group()

    def _reap_group(self) -> None:
        # A worker's pool processes share its process group; none may outlive the fleet.
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:])
