"""Scenario 6: the same idempotency key submitted concurrently from 10 threads: one task, one result."""

from __future__ import annotations

import threading
import uuid

import pytest

from .conftest import RunningFleet

pytestmark = pytest.mark.integration


def test_one_key_from_ten_threads_is_one_task_and_one_result(clean_fleet: RunningFleet) -> None:
    # Given ten threads holding the same request and idempotency key, released at once
    key = f"order-{uuid.uuid4().hex}"
    request = {"prompt": "Rename variable tmp to buffer", "tier": "mini", "idempotency_key": key}
    barrier = threading.Barrier(10)
    ids: list[str] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            barrier.wait(5)
            ids.append(clean_fleet.client.submit(request))
        except BaseException as exc:
            errors.append(exc)

    # When they all submit
    threads = [threading.Thread(target=submit) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    # Then they all get the one task id, and it runs once
    assert errors == []
    assert len(ids) == 10 and len(set(ids)) == 1
    result = clean_fleet.client.result(ids[0], timeout=30)
    assert result.status == "completed"
    assert clean_fleet.mock_stats()["total"] == 1
    assert clean_fleet.client.redis.keys("celery-task-meta-*") == [f"celery-task-meta-{ids[0]}".encode()]
