"""A broker that drops out mid-task requeues the job instead of failing it (Celery would store
FAILURE and ack the message: the job would be lost)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from fleet import tasks
from fleet.app import EXECUTE_TASK, LEGACY_NOTIFY_TASK, NOTIFY_TASK, ROUTE_TASK, app
from fleet.errors import BrokerError


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Connection refused"),
        OperationalError("publish failed"),
        ConnectionError(),
        BrokerError("the broker at redis://h cannot be used"),
    ],
)
def test_a_broker_error_in_a_task_body_is_a_requeue(error: Exception) -> None:
    # Given a task of the fleet's kind whose body meets the broker gone
    other = Celery(set_as_current=False)

    @other.task(base=tasks.FleetTask, bind=True, shared=False)
    def job(self: object) -> None:
        raise error

    # When it runs, Then Celery is told to put the message back, not to record a failure
    with pytest.raises(Reject) as info:
        job()
    assert info.value.requeue is True


def test_a_task_error_that_is_not_the_broker_still_fails() -> None:
    other = Celery(set_as_current=False)

    @other.task(base=tasks.FleetTask, shared=False)
    def job() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        job()


def test_the_fleet_tasks_are_broker_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the worker's app (configured against a broker nobody needs to reach here)
    monkeypatch.setattr(app, "_fleet_redis_url", app._fleet_redis_url or "redis://127.0.0.1:1/0")
    registered: Any = app.tasks
    # Then route and execute requeue on a broker error, and the notify task answers to its old name too
    for name in (ROUTE_TASK, EXECUTE_TASK):
        assert isinstance(registered[name], tasks.FleetTask), name
    assert registered[LEGACY_NOTIFY_TASK].__wrapped__.__code__ is registered[NOTIFY_TASK].__wrapped__.__code__
