"""What the benchmarks share: an embedded broker, the mock provider and worker processes.

Not a benchmark itself (the leading underscore keeps `make bench` from running it).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from fleet.embedded import EmbeddedBroker
from fleet.procs import Child, children_of
from fleet.settings import load_settings
from fleet.worker import worker_env

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
            url = server.start()
            _broker_pids.append(server.process.pid if server.process else 0)
            yield url
        finally:
            _broker_pids.clear()
            server.stop()


_broker_pids: list[int] = []


def broker_cpu_s() -> float:
    """CPU seconds the embedded broker used so far (0 with FLEET_BENCH_REDIS_URL: not ours to read)."""
    return cpu_s(_broker_pids[-1]) if _broker_pids else 0.0


def broker_reads(url: str) -> int:
    """Requests the broker has read so far (``total_reads_processed``: a command, a pipeline or a
    script sent at once is one read, so about one per round trip)."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["total_reads_processed"])
    finally:
        client.close()


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
    _mock_pids.append(child.pid or 0)
    try:
        yield match.group(1)
    finally:
        _mock_pids.remove(child.pid or 0)
        child.stop(5)


_mock_pids: list[int] = []


def mock_cpu_s() -> float:
    """CPU seconds the running mock provider used so far (it is one process, one core at most: a
    share of wall time near 1.0 would make it the bottleneck)."""
    return cpu_s(_mock_pids[-1]) if _mock_pids else 0.0


def high_limits() -> dict[str, str]:
    """FLEET_* overrides lifting every queue rate limit and model rpm/tpm out of the way (the
    benchmarks measure the fleet, not the limits; bench/rate_limit.py measures those)."""
    from fleet.settings import load_settings

    settings = load_settings(env={})
    env = {
        f"FLEET_QUEUES__{q.upper()}__RATE_LIMIT": '"100000000/m"'
        for q in ("mini", "standard", "full", "fast")
    }
    for provider, ps in settings.providers.items():
        for model in ps.models:
            # Model names hold '.' and '-': fine in an environment passed by Python, not by a shell.
            prefix = f"FLEET_PROVIDERS__{provider.upper()}__MODELS__{model.upper()}"
            env[f"{prefix}__RPM"] = "1000000000"
            env[f"{prefix}__TPM"] = "1000000000000"
    return env


def otel_env() -> dict[str, str]:
    """Tracing and metrics on, every span and metric built and then dropped by the ``discard``
    exporters (the cost of telemetry without a backend). ``BENCH_OTEL_EXPORTER=none`` measures the
    fleet with telemetry off instead."""
    name = os.environ.get("BENCH_OTEL_EXPORTER", "discard")
    return {"OTEL_TRACES_EXPORTER": name, "OTEL_METRICS_EXPORTER": name}


def inline_mock() -> dict[str, str]:
    """FLEET_* override answering every model call inside the worker (``mock.transport = "inline"``):
    a provider that costs nothing, so a run measures the fleet alone (the mock server's CPU and the
    HTTP client's would otherwise be charged to it on the same cores)."""
    return {"FLEET_MOCK__TRANSPORT": '"inline"'}


def fleet_env(redis_url: str, mock_url: str, **extra: str) -> dict[str, str]:
    """Environment for fleet workers on this broker, every provider pointed at the mock."""
    # FLEET_BENCH_* are the benchmarks' own switches, not settings: the fleet refuses unknown keys.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_BENCH_")}
    env.update(
        FLEET_REDIS_URL=redis_url,
        FLEET_PROFILE="demo",
        FLEET_MOCK__ENABLED="true",
        FLEET_MOCK__URL=mock_url,
        # The fleet's own machinery is measured: a judge's calls are model calls, as more jobs would be.
        FLEET_QUALITY__ENABLED="false",
        FLEET_MOCK__SIMULATE_QUALITY="false",
        # Live calls only: the workload's jobs with deadlines would wait for a provider batch.
        FLEET_BATCH__ENABLED="false",
        PYTHONPATH=f"{BENCH}:{BENCH.parent}",
        **extra,
    )
    return env


@dataclass(frozen=True)
class Layout:
    """The fleet's worker processes in a run: one router worker and one worker on the four tier
    queues, each a (pool, concurrency)."""

    name: str
    router: tuple[str, int]
    tiers: tuple[str, int]

    def describe(self) -> str:
        (router, r), (tiers, t) = self.router, self.tiers
        return f"router {router} x {r}, tiers {tiers} x {t}"

    def start(self, env: dict[str, str], log_dir: Path, *, router: bool = True, **kw: Any) -> list[Child]:
        """The router worker (unless ``router`` is false: the producer routes) and the tier worker."""
        (router_pool, r), (tier_pool, t) = self.router, self.tiers
        workers = (
            start_workers(
                "fleet.worker", "router", 1, env=env, concurrency=r, pool=router_pool, log_dir=log_dir, **kw
            )
            if router
            else []
        )
        return workers + start_workers(
            "fleet.worker",
            TIERS,
            1,
            env=env,
            concurrency=t,
            pool=tier_pool,
            log_dir=log_dir,
            name="tiers",
            **kw,
        )


TIERS = "mini,standard,full,fast"
#: Bare Celery's layout in the benchmarks, and the fleet's beside it: prefork x 2 everywhere.
SAME = Layout("same", ("prefork", 2), ("prefork", 2))


def shipped_layout() -> Layout:
    """The pools the fleet ships with (queues/router.toml and queues/mini.toml: what `fleet up` starts)."""
    queues = load_settings(env={}).queues  # the files, whatever FLEET_* the shell holds
    router, tier = queues["router"], queues["mini"]
    return Layout("shipped", (router.pool, router.concurrency), (tier.pool, tier.concurrency))


def layout(name: str) -> Layout:
    """``same`` or ``shipped``: the choices of the benchmarks' ``--layout``."""
    return SAME if name == "same" else shipped_layout()


def start_workers(
    app: str,
    queue: str,
    count: int,
    *,
    env: dict[str, str],
    concurrency: int,
    pool: str,
    log_dir: Path,
    name: str | None = None,
    loglevel: str = "INFO",
) -> list[Child]:
    """``count`` Celery worker processes of ``app`` on ``queue`` (comma-separated for several);
    waits until each logs ready."""
    children = []
    base = name or queue
    for i in range(count):
        argv = [
            sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue,
            # the fleet's asyncio pool is Celery's "custom" pool in a fleet worker (fleet/worker.py)
            "-P", "custom" if pool == "asyncio" else pool,
            "-c", str(concurrency), "-n", f"{base}-{i}@{socket.gethostname()}",
            "--without-gossip", "--without-mingle", "-l", loglevel,
        ]  # fmt: skip
        env = {**env, **worker_env(pool)}
        child = Child(f"{base}-{i}", argv, env=env, log_file=log_dir / f"{base}-{i}.log")
        child.start()
        children.append(child)
    deadline = time.monotonic() + 60
    # At WARNING the worker does not log "ready.": its banner is the sign it runs.
    marker = "ready." if loglevel == "INFO" else "[queues]"
    for child in children:
        while marker not in child.log_tail(200):
            if not child.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"worker {child.name} did not start: {child.log_tail()}")
            time.sleep(0.1)
    return children


def stop(children: list[Child]) -> None:
    for child in children:
        child.stop(10)


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a worker and its pool processes, summed, in MiB."""
    total = 0
    for p in [pid, *children_of(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a worker and its live pool processes: a measure of
    per-job cost that other load on the machine does not distort the way wall-clock rates are."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid, *children_of(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def steady_rate(finishes: list[float]) -> float:
    """Completions per second between the 10th and 90th percentile of finish times."""
    finishes = sorted(finishes)
    lo, hi = int(len(finishes) * 0.1), int(len(finishes) * 0.9)
    span = finishes[hi] - finishes[lo] if finishes else 0.0
    return (hi - lo) / span if span > 0 else 0.0


def wait_for_fleet(redis_url: str, jobs: int, timeout: float) -> bool:
    """Wait until ``jobs`` jobs reached a final state, watching one number: every job writes one cost
    line (XADD) in the round trip that stores its result. Polling the results themselves (an MGET of
    thousands of keys, each found result decoded) competed with the workers for the same cores."""
    from fleet import keys

    client = redis.Redis.from_url(redis_url)
    try:
        return wait_until(lambda: client.xlen(keys.costs()) >= jobs, timeout=timeout, interval=0.05)
    finally:
        client.close()


def collect_results(client: Any, ids: list[str]) -> dict[str, Any]:
    """The final results of ``ids`` (a fleet Client's peek, 2,000 at a time)."""
    out: dict[str, Any] = {}
    for i in range(0, len(ids), 2000):
        out.update(client.peek(ids[i : i + 2000]))
    return out


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
