"""A small fleet of its own for the chaos tests: its own broker (so it can be killed), its own mock
provider, only the pools a scenario needs. Nothing here touches the session's broker."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fleet import keys
from fleet.embedded import EmbeddedBroker
from fleet.escalations import EscalationStore, RedisEscalationStore
from fleet.models import TaskResult
from fleet.procs import children_of
from fleet.producer import Client
from fleet.settings import Settings, load_settings
from fleet.supervisor import FleetOptions, Supervisor

#: What the chaos fleets' workers run with: the crash hook armed, canary keys to watch for.
CRASH_MARKER = "CHAOS-CRASH-7f3e"


@dataclass
class ChaosFleet:
    settings: Settings
    supervisor: Supervisor
    broker: EmbeddedBroker
    client: Client
    state_dir: Path

    @property
    def redis_url(self) -> str:
        return self.broker.url

    @property
    def mock_url(self) -> str:
        return self.supervisor.mock_url

    def cli_env(self, **extra: str) -> dict[str, str]:
        """The environment of a ``fleet`` CLI run against this fleet: this process's environment
        without its FLEET_ settings (the session's broker), then this fleet's broker and state."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        return {**env, "FLEET_REDIS_URL": self.redis_url, "FLEET_STATE_DIR": str(self.state_dir), **extra}

    def mock_config(self, **patch: object) -> None:
        httpx.post(f"{self.mock_url}/_mock/config", json=patch, timeout=5).raise_for_status()

    def mock_reset(self) -> None:
        httpx.post(f"{self.mock_url}/_mock/reset", timeout=5).raise_for_status()

    def mock_stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.mock_url}/stats", timeout=5).json()
        return data

    def store(self) -> EscalationStore:
        return RedisEscalationStore(self.client.redis)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.state_dir / "logs").glob("*.log"))

    def pool_children(self, queue: str) -> list[int]:
        """Pids of the prefork children of ``queue``'s worker (its main process excluded)."""
        main = self.supervisor.pools[queue].pid
        assert main is not None
        return children_of(main)

    def wait_final(self, task_ids: Iterable[str], timeout: float) -> dict[str, TaskResult]:
        """Poll until every job has a final result or ``timeout`` passes; returns what is final."""
        ids = list(task_ids)
        done: dict[str, TaskResult] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the broker may be restarting
                done.update(self.client.peek([i for i in ids if i not in done]))
            if len(done) == len(ids):
                break
            self.supervisor.check()  # restart pools that died, as `fleet up` does every second
            time.sleep(0.2)
        return done


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def kill_worker_mid_call(fleet: ChaosFleet, queue: str = "mini") -> tuple[str, float]:
    """Submit a job pinned to ``queue``, SIGKILL that queue's whole worker once the job runs (no chance
    to give anything back), and restart it as `fleet up` does; the job's id and when it was killed."""
    task_id = fleet.client.submit({"prompt": "Rename variable n to count", "tier": queue})
    wait_for(lambda: fleet.client.redis.exists(keys.running(task_id)), 20, "the job to start")
    killed_at = time.monotonic()
    fleet.supervisor.pools[queue].signal(signal.SIGKILL)
    wait_for(lambda: not fleet.supervisor.pools[queue].alive(), 5, "the worker to die")
    fleet.supervisor.check()
    return task_id, killed_at


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@contextmanager
def chaos_fleet(
    tmp: Path,
    *,
    queues: tuple[str, ...] = ("router", "mini"),
    env: dict[str, str] | None = None,
    scale: dict[str, int] | None = None,
    mock_latency_ms: float = 5.0,
    broker: EmbeddedBroker | None = None,
) -> Iterator[ChaosFleet]:
    """Start a fleet on its own embedded broker (AOF on) with only ``queues``; stop all of it after.

    ``env`` holds FLEET_* overrides for the workers *and* the test's settings (pool types, the
    visibility timeout, the crash marker), so both sides agree.
    """
    own_broker = broker is None
    server = broker or EmbeddedBroker(tmp / "broker")
    if server.process is None:
        server.start()
    # The quality gate and simulated quality are off unless a scenario turns them on: a chaos fleet
    # runs only the pools it needs, and an upgraded job would wait for a tier that is not running.
    quality_off = {"FLEET_QUALITY__ENABLED": "false", "FLEET_MOCK__SIMULATE_QUALITY": "false"}
    extra = {"FLEET_CHAOS__CRASH_MARKER": CRASH_MARKER, **quality_off, **(env or {})}
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    settings = load_settings(
        profile="demo",
        env={**base, **extra, "FLEET_REDIS_URL": server.url, "FLEET_STATE_DIR": str(tmp / "state")},
        overrides={"mock.latency_ms": mock_latency_ms},
    )
    sup = Supervisor(
        settings,
        FleetOptions(
            queues=queues,
            scale=scale or {},
            flower=False,
            publish_state=False,
            log_dir=tmp / "state" / "logs",
            shutdown_grace_s=5,
            env=extra,
        ),
    )
    client: Client | None = None
    try:
        sup.start()
        settings.mock.url = sup.mock_url
        client = Client(settings, redis_url=server.url)
        yield ChaosFleet(settings, sup, server, client, tmp / "state")
    finally:
        if client is not None:
            client.close()
        sup.stop()
        if own_broker:
            server.stop()
