"""Bad input is refused at the door; poison messages at a worker become escalations."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kombu import Connection

from fleet.app import EXECUTE_TASK
from fleet.errors import InvalidRequest
from fleet.escalations import EscalationRecord
from fleet.keys import QUEUES, queue_lists

from .conftest import RunningFleet, wait_escalation

pytestmark = pytest.mark.integration

BAD_REQUESTS: list[tuple[Any, str]] = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "hi", "colour": "red"}, "colour: unknown field"),
    ({"prompt": 42}, "prompt"),
    ({"prompt": "hi", "hints": {"latency_budget_ms": "fast"}}, "hints.latency_budget_ms"),
    ({"prompt": "x" * (1024 * 1024 + 1)}, "over the limit"),
    ({"prompt": "hi", "tier": "huge"}, "tier"),
    ({"prompt": "hi", "temperature": float("nan")}, "temperature"),
    ({"prompt": "hi", "response_schema": {"type": "nonsense"}}, "response_schema"),
    (["prompt"], "JSON object"),
]


def _depth(fleet: RunningFleet) -> int:
    r = fleet.client.redis
    return sum(int(r.llen(name)) for q in QUEUES for name in queue_lists(q))


@pytest.mark.parametrize(("request_data", "expected"), BAD_REQUESTS)
def test_invalid_request_is_refused_and_nothing_enqueued(
    clean_fleet: RunningFleet, request_data: Any, expected: str
) -> None:
    before = _depth(clean_fleet)
    # (results of an earlier module's jobs may still land: only a new job record would be ours)
    records = set(clean_fleet.client.redis.keys("fleet:job:*"))
    with pytest.raises(InvalidRequest) as info:
        clean_fleet.client.submit(request_data)
    assert expected in str(info.value)
    assert info.value.code == "invalid_request"
    assert _depth(clean_fleet) == before
    assert set(clean_fleet.client.redis.keys("fleet:job:*")) == records


def _wait_escalation(fleet: RunningFleet, task_id: str, timeout: float = 20) -> EscalationRecord:
    record = wait_escalation(fleet.client.redis, task_id, timeout)
    if record is None:
        raise AssertionError(f"no escalation for {task_id}")
    return record


def _publish_raw(fleet: RunningFleet, body: bytes, headers: dict[str, Any], queue: str = "mini") -> None:
    with Connection(fleet.redis_url) as conn:
        conn.Producer().publish(
            body,
            exchange="fleet",
            routing_key=queue,
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers,
            serializer=None,
        )


def test_poison_messages_on_a_tier_queue_land_in_escalations(clean_fleet: RunningFleet) -> None:
    # Given three malformed messages pushed straight onto the mini queue
    wrong_fields = uuid.uuid4().hex
    clean_fleet.client.app.send_task(
        EXECUTE_TASK, args=[{"bogus": True}, {"id": wrong_fields}], task_id=wrong_fields, queue="mini"
    )
    not_json = uuid.uuid4().hex
    _publish_raw(clean_fleet, b"{this is not json", {"task": EXECUTE_TASK, "id": not_json, "lang": "py"})
    unknown = uuid.uuid4().hex
    clean_fleet.client.app.send_task("fleet.no_such_task", args=[], task_id=unknown, queue="mini")

    # Then each is an escalation with its reason
    assert _wait_escalation(clean_fleet, wrong_fields).reason == "invalid_message"
    assert _wait_escalation(clean_fleet, not_json).reason == "invalid_message"
    assert _wait_escalation(clean_fleet, unknown).reason == "unknown_task"
    # And the producer of the wrong-fields job sees a final, escalated result
    res = clean_fleet.client.result(wrong_fields, timeout=10)
    assert res.status == "escalated" and res.reason == "invalid_message"

    # And the worker keeps consuming
    assert clean_fleet.supervisor.pools["mini"].alive()
    task_id = clean_fleet.client.submit({"prompt": "Rename variable x to count", "tier": "mini"})
    assert clean_fleet.client.result(task_id, timeout=30).status == "completed"
