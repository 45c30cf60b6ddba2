"""Scenario 4: provider outages and flakiness at the mock provider; every job completes or is
escalated with a reason, none is left without a final state."""

from __future__ import annotations

import pytest

from fleet.escalations import RedisEscalationStore

from .conftest import RunningFleet

pytestmark = pytest.mark.integration

TIERS = ("mini", "standard", "full", "fast")
#: The mini tier's primary (queues/mini.toml) and groq's model: down for the whole run.
DOWN = ["gpt-4.1-mini", "llama-3.3-70b-versatile"]


def _storm(fleet: RunningFleet, n: int, failure_rate: float) -> None:
    # Given two models down (mini's primary, fast's primary) and every other call failing at failure_rate
    fleet.mock_config(down_models=DOWN, failure_rate=failure_rate, seed=11)

    # When jobs run on every tier
    ids = [fleet.client.submit({"prompt": f"Summarise ticket #{i} in one line", "tier": TIERS[i % 4]})
           for i in range(n)]  # fmt: skip
    results = [fleet.client.result(i, timeout=120) for i in ids]

    # Then each one completed or was escalated with a reason; no job is without a final state
    assert len(results) == n
    store = RedisEscalationStore(fleet.client.redis)
    for res in results:
        assert res.status in ("completed", "escalated")
        if res.status == "escalated":
            record = store.for_task(res.task_id)
            assert record is not None and record.reason == res.reason and res.reason
        else:
            assert res.model not in DOWN
    assert any(r.status == "completed" for r in results)


def test_outage_and_flaky_providers_every_job_completes_or_escalates(clean_fleet: RunningFleet) -> None:
    _storm(clean_fleet, 24, failure_rate=0.2)


@pytest.mark.chaos
def test_outage_and_flaky_providers_at_load(clean_fleet: RunningFleet) -> None:
    _storm(clean_fleet, 300, failure_rate=0.4)
