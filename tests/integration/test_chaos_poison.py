"""Scenario 5: poison messages on every queue land in escalations with a reason code, and every
worker keeps consuming. (The job that crashes its worker every time: test_chaos_workers.)"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kombu import Connection

from fleet.app import EXECUTE_TASK, NOTIFY_TASK, ROUTE_TASK
from fleet.consumer import MAX_BODY_SLACK
from fleet.escalations import EscalationRecord, RedisEscalationStore
from fleet.keys import QUEUES

from .conftest import RunningFleet, wait_escalation

pytestmark = pytest.mark.integration

TASK_OF = {"router": ROUTE_TASK, "escalations": NOTIFY_TASK}


def _raw(fleet: RunningFleet, queue: str, body: bytes, task: str, task_id: str) -> None:
    with Connection(fleet.redis_url) as conn:
        conn.Producer().publish(
            body, exchange="fleet", routing_key=queue, content_type="application/json",
            content_encoding="utf-8", headers={"task": task, "id": task_id, "lang": "py"}, serializer=None,
        )  # fmt: skip


def _send(fleet: RunningFleet, queue: str, args: list[Any], task_id: str, name: str | None = None) -> None:
    fleet.client.app.send_task(
        name or TASK_OF.get(queue, EXECUTE_TASK), args=args, task_id=task_id, queue=queue
    )


def _unknown_task(fleet: RunningFleet, queue: str, task_id: str) -> None:
    _send(fleet, queue, [], task_id, name="fleet.no_such_task")


def _not_json(fleet: RunningFleet, queue: str, task_id: str) -> None:
    _raw(fleet, queue, b"{this is not json", TASK_OF.get(queue, EXECUTE_TASK), task_id)


def _wrong_fields(fleet: RunningFleet, queue: str, task_id: str) -> None:
    _send(fleet, queue, [{"bogus": True}, {"id": task_id}], task_id)


def _wrong_shape(fleet: RunningFleet, queue: str, task_id: str) -> None:
    # JSON, but not Celery's [args, kwargs, embed]: this used to kill the worker for good
    _raw(fleet, queue, json.dumps({"prompt": "hi"}).encode(), TASK_OF.get(queue, EXECUTE_TASK), task_id)


def _oversized(fleet: RunningFleet, queue: str, task_id: str) -> None:
    big = "x" * (fleet.settings.limits.max_prompt_bytes + MAX_BODY_SLACK)
    _send(fleet, queue, [{"prompt": big}, {"id": task_id}], task_id)


def _bad_schema(fleet: RunningFleet, queue: str, task_id: str) -> None:
    _send(fleet, queue, [{"prompt": "hi", "response_schema": {"type": "nonsense"}}, {"id": task_id}], task_id)


CASES: dict[str, tuple[Callable[[RunningFleet, str, str], None], str]] = {
    "unknown_task": (_unknown_task, "unknown_task"),
    "not_json": (_not_json, "invalid_message"),
    "wrong_fields": (_wrong_fields, "invalid_message"),
    "wrong_shape": (_wrong_shape, "invalid_message"),
    "oversized": (_oversized, "invalid_message"),
    "invalid_response_schema": (_bad_schema, "invalid_message"),
}


def _wait(store: RedisEscalationStore, task_id: str, timeout: float = 20) -> EscalationRecord | None:
    return wait_escalation(store.redis, task_id, timeout)


@pytest.mark.parametrize("case", list(CASES))
def test_poison_on_every_queue_is_escalated_and_workers_keep_consuming(
    clean_fleet: RunningFleet, case: str
) -> None:
    # Given one poison message of this kind on each of the six queues
    make, reason = CASES[case]
    sent = {queue: uuid.uuid4().hex for queue in QUEUES}
    for queue, task_id in sent.items():
        make(clean_fleet, queue, task_id)

    # Then each lands in escalations with its reason code and its queue
    store = RedisEscalationStore(clean_fleet.client.redis)
    for queue, task_id in sent.items():
        record = _wait(store, task_id)
        assert record is not None, f"{case} on {queue}: no escalation"
        assert record.reason == reason, (queue, record.detail)
        assert record.queue in (queue, None)

    # And every pool is alive and keeps consuming
    assert all(pool.alive() for pool in clean_fleet.supervisor.pools.values())
    task_id = clean_fleet.client.submit({"prompt": "Rename variable a to b"})
    assert clean_fleet.client.result(task_id, timeout=30).status == "completed"
