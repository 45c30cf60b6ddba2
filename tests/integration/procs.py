"""Helpers for tests that run `fleet` commands as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

FLEET = [sys.executable, "-m", "fleet"]


def marked_env(base: dict[str, str] | None = None) -> tuple[dict[str, str], str]:
    """An environment with a unique marker, to find every process started under it."""
    marker = uuid.uuid4().hex
    env = dict(base if base is not None else os.environ)
    env["FLEET_TEST_MARKER"] = marker
    env.pop("FLEET_REDIS_URL", None) if base is None else None
    return env, marker


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment carries ``marker``."""
    needle = f"FLEET_TEST_MARKER={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                stat = (entry / "stat").read_text()
                if ") Z" not in stat:  # zombies are already dead
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_no_processes(marker: str, timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    left = processes_with(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_with(marker)
    return left


def run(
    args: list[str], env: dict[str, str], timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLEET, *args], env=env, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload, no-any-return]
