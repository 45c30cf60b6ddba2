"""A real fleet for the integration suite: every worker pool as a real process, the mock provider
over real HTTP, on the session's broker. Started once per broker and shared by the tests."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fleet.escalations import EscalationRecord, RedisEscalationStore
from fleet.producer import Client
from fleet.settings import Settings, load_settings
from fleet.supervisor import FleetOptions, Supervisor

from ..conftest import flush_fleet_keys

#: Canary API keys: they must never show up in a log, a result or an escalation record.
CANARY_KEYS = {"OPENAI_API_KEY": "sk-canary-openai-5f1d2c", "ANTHROPIC_API_KEY": "sk-ant-canary-9e8d7c"}
#: The quality gate and the mock's simulated quality are off in the shared fleet: its tests ask for
#: exact tiers and answers. tests/integration/test_quality_gate.py runs a fleet of its own with both on.
QUALITY_OFF = {"FLEET_QUALITY__ENABLED": "false", "FLEET_MOCK__SIMULATE_QUALITY": "false"}
#: What the shared fleet's workers run with: a short breaker cooldown so tests can watch it probe.
WORKER_ENV = {"FLEET_BREAKER__COOLDOWN_S": "2", **QUALITY_OFF, **CANARY_KEYS}


@dataclass
class RunningFleet:
    settings: Settings
    supervisor: Supervisor
    client: Client
    redis_url: str
    state_dir: Path

    @property
    def mock_url(self) -> str:
        return self.supervisor.mock_url

    def mock_config(self, **patch: object) -> dict[str, object]:
        """Change the mock provider's faults at run time (POST /_mock/config)."""
        response = httpx.post(f"{self.mock_url}/_mock/config", json=patch, timeout=5)
        response.raise_for_status()
        data: dict[str, object] = response.json()
        return data

    def mock_stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.mock_url}/stats", timeout=5).json()
        return data

    def logs(self) -> str:
        """Everything the pools have logged so far."""
        return "".join(p.read_text(errors="replace") for p in (self.state_dir / "logs").glob("*.log"))

    def env(self) -> dict[str, str]:
        """Environment for a `fleet` subprocess talking to this fleet."""
        env = dict(os.environ)
        env.update(
            FLEET_REDIS_URL=self.redis_url,
            FLEET_STATE_DIR=str(self.state_dir),
            FLEET_PROFILE="demo",
            FLEET_MOCK__URL=self.mock_url,
        )
        return env


@pytest.fixture(scope="session")
def fleet(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    state = tmp_path_factory.mktemp("fleet-state")
    env = dict(os.environ, FLEET_REDIS_URL=broker_url, FLEET_STATE_DIR=str(state), **QUALITY_OFF)
    settings = load_settings(profile="demo", env=env, overrides={"mock.latency_ms": 5})
    sup = Supervisor(
        settings,
        FleetOptions(
            flower=False,
            publish_state=False,
            log_dir=state / "logs",
            shutdown_grace_s=10,
            env=WORKER_ENV,
        ),
    )
    sup.start()
    settings.mock.url = sup.mock_url
    client = Client(settings, redis_url=broker_url)
    try:
        yield RunningFleet(settings, sup, client, broker_url, state)
    finally:
        client.close()
        sup.stop()


@pytest.fixture
def clean_fleet(fleet: RunningFleet) -> Iterator[RunningFleet]:
    """The shared fleet with an empty database, the mock provider reset to no faults."""
    flush_fleet_keys(fleet.redis_url)
    httpx.post(f"{fleet.mock_url}/_mock/reset", timeout=5)
    fleet.mock_config(failure_rate=0.0, down_models=[], faults_by_model={})
    yield fleet
    fleet.mock_config(failure_rate=0.0, down_models=[], faults_by_model={})


def wait_escalation(client: redis.Redis, task_id: str, timeout: float = 20) -> EscalationRecord | None:
    """The escalation recorded for ``task_id``, polled until it appears (None after ``timeout``)."""
    store = RedisEscalationStore(client)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.for_task(task_id)
        if record is not None:
            return record
        time.sleep(0.1)
    return None
