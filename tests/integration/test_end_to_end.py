"""Jobs through the producer API, real router and tier workers, the mock provider over HTTP."""

from __future__ import annotations

import time

import pytest

from fleet.workload import sample

from .conftest import RunningFleet

pytestmark = pytest.mark.integration


def test_hundred_jobs_reach_a_final_state_on_every_tier(clean_fleet: RunningFleet) -> None:
    # Given a hundred varied jobs from the bundled workload
    jobs = sample(100)
    client = clean_fleet.client

    # When they are submitted through the producer API
    task_ids = [client.submit(job) for job in jobs]
    deadline = time.monotonic() + 90
    results = {}
    while len(results) < len(task_ids) and time.monotonic() < deadline:
        results.update(client.peek([t for t in task_ids if t not in results]))
        time.sleep(0.2)

    # Then every one reaches a final state, and every tier did work
    assert len(results) == 100, f"{100 - len(results)} jobs have no final state"
    tiers = {str(r.tier) for r in results.values()}
    assert tiers == {"mini", "standard", "full", "fast"}
    completed = [r for r in results.values() if r.status == "completed"]
    assert len(completed) >= 90
    for res in completed:
        assert res.routing is not None and res.routing.reasons, res.task_id
        assert res.tier == res.routing.tier
        assert res.model and res.provider
        assert res.attempts and res.attempts[-1].outcome == "ok"
        assert res.input_tokens > 0 and res.output_tokens > 0
        assert res.cost_usd > 0
        assert res.answer
        assert res.finished_at is not None and res.submitted_at is not None
        assert res.finished_at >= res.submitted_at


def test_pinned_job_skips_the_router_and_says_so(clean_fleet: RunningFleet) -> None:
    task_id = clean_fleet.client.submit({"prompt": "Reformat this list as CSV: a, b, c", "tier": "full"})
    res = clean_fleet.client.result(task_id, timeout=30)
    assert res.status == "completed"
    assert res.tier == "full"
    assert res.routing is not None and res.routing.classifier == "pinned"
    assert any("pinned" in reason for reason in res.routing.reasons)


def test_idempotency_key_enqueues_once(clean_fleet: RunningFleet) -> None:
    request = {"prompt": "Translate 'good morning' to French", "idempotency_key": "order-42"}
    first = clean_fleet.client.submit(request)
    second = clean_fleet.client.submit(request)
    assert first == second
    assert clean_fleet.client.result(first, timeout=30).status == "completed"


@pytest.mark.parametrize("tier", ["mini", "standard"])  # the OpenAI-compatible and the Anthropic adapter
def test_a_conversation_reaches_the_model_whole(clean_fleet: RunningFleet, tier: str) -> None:
    # Given a conversation (few-shot turns and a system message), and the same last ask alone
    turns = [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "Capital of France? " + "Context paragraph. " * 60},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Capital of Italy?"},
    ]
    client = clean_fleet.client
    whole = client.result(client.submit({"messages": turns, "tier": tier, "stop": ["\n\n\n"], "seed": 3}), 30)
    alone = client.result(client.submit({"prompt": "Capital of Italy?", "tier": tier}), 30)
    # Then the model answers the last user turn, having read every turn (its input tokens)
    assert whole.status == alone.status == "completed"
    assert "Capital of Italy?" in (whole.answer or "")
    assert whole.input_tokens > alone.input_tokens + 200


def test_status_follows_a_job_from_routed_to_running_to_completed(clean_fleet: RunningFleet) -> None:
    # Given model calls that take 1.5 s
    clean_fleet.mock_config(latency_ms=1500)
    client = clean_fleet.client
    try:
        task_id = client.submit({"prompt": "Rename variable n to count in utils.py", "kind": "test.status"})
        # When it runs, Then its status names the worker, the chain's first link and the delivery
        deadline = time.monotonic() + 20
        status = client.status(task_id)
        while status.state != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
            status = client.status(task_id)
        assert status.state == "running", status
        assert status.tier is not None and status.queue == str(status.tier) and status.reasons
        links = clean_fleet.settings.tier(status.tier).links()
        assert status.link == f"{links[0][0]}:{links[0][1]}" and status.attempt == 1
        assert status.worker and status.worker.endswith("#0")  # the worker's identity and delivery
        # And then completed, with its result
        res = client.result(task_id, timeout=30)
        done = client.status(task_id)
        assert done.state == "completed" and done.result == res
    finally:
        clean_fleet.mock_config(latency_ms=5)
