"""What the benchmarks share: an embedded broker, the mock provider and worker processes.

Not a benchmark itself (the leading underscore keeps `make bench` from running it).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from fleet.embedded import EmbeddedBroker
from fleet.procs import Child

BENCH = Path(__file__).resolve().parent
READY = re.compile(r"listening on (http://\S+)")


@contextmanager
def broker() -> Iterator[str]:
    """A fresh embedded broker (or FLEET_BENCH_REDIS_URL, flushed)."""
    url = os.environ.get("FLEET_BENCH_REDIS_URL")
    if url:
        redis.Redis.from_url(url).flushdb()
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        server = EmbeddedBroker(Path(tmp), appendonly=False)
        try:
            yield server.start()
        finally:
            server.stop()


@contextmanager
def mock_provider(latency_ms: float = 0.0, log_dir: Path | None = None) -> Iterator[str]:
    """The mock provider as its own process; yields its URL."""
    argv = [
        sys.executable,
        "-m",
        "fleet.providers.mock_server",
        "--port",
        "0",
        "--latency-ms",
        str(latency_ms),
    ]
    log = (log_dir or Path(tempfile.gettempdir())) / "bench-mock.log"
    child = Child("mock", argv, env=dict(os.environ), log_file=log)
    child.start(capture_stdout=True)
    assert child.process is not None and child.process.stdout is not None
    line = child.process.stdout.readline().decode()
    match = READY.search(line)
    if not match:
        child.stop(2)
        raise RuntimeError(f"mock provider did not start: {child.log_tail()}")
    try:
        yield match.group(1)
    finally:
        child.stop(5)


def fleet_env(redis_url: str, mock_url: str, **extra: str) -> dict[str, str]:
    """Environment for fleet workers on this broker, every provider pointed at the mock."""
    env = dict(os.environ)
    env.update(
        FLEET_REDIS_URL=redis_url,
        FLEET_PROFILE="demo",
        FLEET_MOCK__ENABLED="true",
        FLEET_MOCK__URL=mock_url,
        PYTHONPATH=str(BENCH),
        **extra,
    )
    return env


def start_workers(
    app: str, queue: str, count: int, *, env: dict[str, str], concurrency: int, pool: str, log_dir: Path
) -> list[Child]:
    """``count`` Celery worker processes of ``app`` on ``queue``; waits until each logs ready."""
    children = []
    for i in range(count):
        argv = [
            sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, "-P", pool,
            "-c", str(concurrency), "-n", f"{queue}-{i}@{socket.gethostname()}",
            "--without-gossip", "--without-mingle", "-l", "INFO",
        ]  # fmt: skip
        child = Child(f"{queue}-{i}", argv, env=env, log_file=log_dir / f"{queue}-{i}.log")
        child.start()
        children.append(child)
    deadline = time.monotonic() + 60
    for child in children:
        while "ready." not in child.log_tail(50):
            if not child.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"worker {child.name} did not start: {child.log_tail()}")
            time.sleep(0.1)
    return children


def stop(children: list[Child]) -> None:
    for child in children:
        child.stop(10)


def peak_rss_kb(pid: int) -> int:
    """VmHWM of a process (and 0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_wait(seconds: float) -> None:
    subprocess.run(["sleep", str(seconds)], check=False)
