"""A broker that drops out mid-job requeues the job instead of failing it (Celery would store
FAILURE and ack the message: the job would be lost)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from fleet import tasks


@pytest.mark.parametrize(
    "error",
    [redis.ConnectionError("Connection refused"), OperationalError("publish failed"), ConnectionError()],
)
def test_a_broker_error_in_a_task_body_is_a_requeue(error: Exception) -> None:
    # Given a task of the fleet's kind whose body meets the broker gone
    app = Celery(set_as_current=False)

    @app.task(base=tasks._BrokerSafeTask, bind=True)
    def job(self: object) -> None:
        raise error

    # When it runs, Then Celery is told to put the message back, not to record a failure
    with pytest.raises(Reject) as info:
        job()
    assert info.value.requeue is True


def test_a_task_error_that_is_not_the_broker_still_fails() -> None:
    app = Celery(set_as_current=False)

    @app.task(base=tasks._BrokerSafeTask)
    def job() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        job()


def test_route_and_execute_are_broker_safe() -> None:
    # The decorators name the base class (reading the tasks would configure the app)
    source = Path(tasks.__file__).read_text()
    for name in ("ROUTE_TASK", "EXECUTE_TASK"):
        at = source.index(f"name={name},")
        decorator = source[source.rindex("@app.task(", 0, at) : source.index("\ndef ", at)]
        assert "base=_BrokerSafeTask" in decorator
