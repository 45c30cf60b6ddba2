"""The fallback chain with real workers and the mock provider over HTTP: outages, rate limits,
bad answers, the circuit breaker, and API keys that never leak."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from fleet.escalations import RedisEscalationStore
from fleet.models import TaskResult

from .conftest import CANARY_KEYS, RunningFleet
from .procs import run

pytestmark = pytest.mark.integration

MINI = ["gpt-4.1-mini", "llama-3.3-70b-versatile", "claude-sonnet-4-5"]  # queues/mini.toml


def collect_status_for(fleet: RunningFleet) -> dict[str, Any]:
    done = run(["status", "--json"], fleet.env())
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def _run(fleet: RunningFleet, n: int, **extra: Any) -> list[TaskResult]:
    ids = [fleet.client.submit({"prompt": f"Rename variable x{i} to total_{i}", "tier": "mini", **extra})
           for i in range(n)]  # fmt: skip
    return [fleet.client.result(i, timeout=60) for i in ids]


def test_primary_down_every_job_completes_on_the_second_link(clean_fleet: RunningFleet) -> None:
    clean_fleet.mock_config(down_models=[MINI[0]])
    results = _run(clean_fleet, 12)
    assert all(r.status == "completed" for r in results)
    assert {r.model for r in results} == {MINI[1]}
    assert all(r.fallback_index == 1 for r in results)
    assert all(r.attempts[0].outcome in ("overloaded", "circuit_open") for r in results)


def test_short_retry_after_waits_on_the_same_link(clean_fleet: RunningFleet) -> None:
    clean_fleet.mock_config(faults_by_model={MINI[0]: {"rate_limited": 0.5}}, retry_after_s=0.3, seed=3)
    results = _run(clean_fleet, 10)
    waited = [r for r in results if [a.outcome for a in r.attempts] == ["rate_limited", "ok"]]
    assert waited, [[a.outcome for a in r.attempts] for r in results]
    for r in waited:
        assert r.model == MINI[0]  # answered by the same link after waiting
        assert r.latency_ms is not None and r.latency_ms >= 300


def test_long_retry_after_moves_to_the_next_link_at_once(clean_fleet: RunningFleet) -> None:
    clean_fleet.mock_config(faults_by_model={MINI[0]: {"rate_limited": 1.0}}, retry_after_s=120)
    results = _run(clean_fleet, 3)
    for r in results:
        assert [a.outcome for a in r.attempts] == ["rate_limited", "ok"]
        assert r.model == MINI[1]
        assert r.latency_ms is not None and r.latency_ms < 5000


@pytest.mark.parametrize("kind", ["malformed_response", "empty_answer", "truncated", "schema_mismatch"])
def test_bad_answers_move_to_the_next_link(clean_fleet: RunningFleet, kind: str) -> None:
    clean_fleet.mock_config(faults_by_model={MINI[0]: {kind: 1.0}})
    extra: dict[str, Any] = {}
    if kind == "schema_mismatch":
        extra["response_schema"] = {
            "type": "object",
            "required": ["name", "total"],
            "properties": {"name": {"type": "string"}, "total": {"type": "number"}},
        }
    results = _run(clean_fleet, 3, **extra)
    for r in results:
        assert r.status == "completed"
        assert [a.outcome for a in r.attempts] == [kind, "ok"]
        if kind == "schema_mismatch":
            assert set(json.loads(r.answer or "")) >= {"name", "total"}


def test_all_links_down_escalates_with_the_whole_history(clean_fleet: RunningFleet) -> None:
    clean_fleet.mock_config(down_models=MINI)
    results = _run(clean_fleet, 4)
    store = RedisEscalationStore(clean_fleet.client.redis)
    for r in results:
        assert r.status == "escalated" and r.escalation_id
        links = {a.link.split(":", 1)[1] for a in r.attempts}
        assert links == set(MINI)
        record = store.get(r.escalation_id)
        assert record.task_id == r.task_id
        assert record.attempts == r.attempts
        assert isinstance(record.request, dict) and record.request["prompt"].startswith("Rename variable")


def test_breaker_opens_and_stops_calls_until_the_cooldown(clean_fleet: RunningFleet) -> None:
    # Given a dead primary, jobs one after another (the breaker opens after 5 failures in 30 s)
    clean_fleet.mock_config(down_models=[MINI[0]])
    results = _run(clean_fleet, 1) + _run(clean_fleet, 1) + _run(clean_fleet, 1)
    calls = clean_fleet.mock_stats()["by_model"].get(MINI[0], 0)
    assert calls == 5  # 2 + 2 + 1: the fifth failure opened it

    # When more jobs come within the cooldown
    more = _run(clean_fleet, 6)

    # Then none of their calls reached the dead provider
    assert clean_fleet.mock_stats()["by_model"].get(MINI[0], 0) == 5
    assert all(r.attempts[0].outcome == "circuit_open" for r in more)
    assert all(r.status == "completed" for r in results + more)

    status = collect_status_for(clean_fleet)
    assert status["breakers"]["openai"]["state"] == "open"

    # And after the cooldown (2 s here) one probe goes through
    time.sleep(2.2)
    _run(clean_fleet, 1)
    assert clean_fleet.mock_stats()["by_model"].get(MINI[0], 0) == 6


def test_canary_keys_appear_in_no_log_result_or_escalation(clean_fleet: RunningFleet) -> None:
    clean_fleet.mock_config(faults_by_model={MINI[0]: {"auth": 1.0}, MINI[1]: {"bad_request": 1.0}},
                            down_models=[MINI[2]])  # fmt: skip
    results = _run(clean_fleet, 3)
    assert all(r.status == "escalated" for r in results)
    assert [a.outcome for a in results[0].attempts][:2] == ["auth", "bad_request"]
    blobs = [r.model_dump_json() for r in results]
    blobs += [e.model_dump_json() for e in RedisEscalationStore(clean_fleet.client.redis).list()]
    blobs.append(clean_fleet.logs())
    for key in CANARY_KEYS.values():
        for blob in blobs:
            assert key not in blob
