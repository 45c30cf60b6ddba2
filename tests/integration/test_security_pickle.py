"""Messages are JSON only: a pickle pushed onto a queue is refused and its payload never runs."""

from __future__ import annotations

import pickle
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from fleet.app import EXECUTE_TASK, ROUTE_TASK
from fleet.escalations import RedisEscalationStore

from .conftest import RunningFleet

pytestmark = pytest.mark.integration


class _Canary:
    """Unpickling this creates a file: the side effect that must never happen."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize(("queue", "task"), [("mini", EXECUTE_TASK), ("router", ROUTE_TASK)])
def test_a_pickle_message_is_refused_and_never_unpickled(
    clean_fleet: RunningFleet, tmp_path: Path, queue: str, task: str
) -> None:
    # Given a pickled task message whose unpickling would create a file
    canary = tmp_path / f"pwned-{uuid.uuid4().hex}"
    task_id = uuid.uuid4().hex
    body = pickle.dumps([[_Canary(canary)], {}, {"callbacks": None, "errbacks": None}])

    # When it is pushed onto a queue the fleet consumes
    with Connection(clean_fleet.redis_url) as conn:
        conn.Producer().publish(
            body, exchange="fleet", routing_key=queue, content_type="application/x-python-serialize",
            content_encoding="binary", headers={"task": task, "id": task_id, "lang": "py"}, serializer=None,
        )  # fmt: skip

    # Then it is dead-lettered as invalid_message, and the file never appears
    store = RedisEscalationStore(clean_fleet.client.redis)
    deadline = time.monotonic() + 20
    record = None
    while record is None and time.monotonic() < deadline:
        record = store.for_task(task_id)
        time.sleep(0.1)
    assert record is not None and record.reason == "invalid_message"
    time.sleep(0.5)
    assert not canary.exists()
    assert clean_fleet.supervisor.pools[queue].alive()
