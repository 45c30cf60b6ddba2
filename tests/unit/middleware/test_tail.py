"""The job's last writes on a real Redis (``job_finish.lua``): with the result, the message's unacked
record goes too, so its ack sends nothing; a run that was superseded drops nothing."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from fleet import keys, transport
from fleet.middleware.tail import RedisTail


def _encode(task_id: str, result: dict[str, Any]) -> tuple[str, str, int | None]:
    return keys.result(task_id), json.dumps({"status": "SUCCESS", "result": result}), 60


def _finishing(client: redis.Redis, task_id: str, holder: str) -> RedisTail:
    """The tail of run "me" of job ``task_id``, whose message is unacked under "tag-<task_id>" and
    whose lock ``holder`` holds, with its result queued."""
    tag = f"tag-{task_id}"
    client.hset("unacked", tag, json.dumps([{"properties": {"delivery_tag": tag}}, "", "mini"]))
    client.zadd("unacked_index", {tag: time.time()})
    client.set(keys.running(task_id), holder)
    tail = RedisTail(client, _encode)
    tail.guard(task_id, "me")
    tail.store_result(task_id, {"status": "completed"}, ack_tag=tag)
    return tail


@pytest.fixture
def state(clean_redis: redis.Redis) -> redis.Redis:
    return redis.Redis(connection_pool=clean_redis.connection_pool)


@pytest.mark.parametrize(("holder", "flushed"), [("me", "written"), ("other", "superseded")])
def test_a_stored_result_takes_its_messages_unacked_record_only_when_it_is_written(
    state: redis.Redis, monkeypatch: pytest.MonkeyPatch, holder: str, flushed: str
) -> None:
    monkeypatch.setattr(transport, "_dropped", type(transport._dropped)())
    # Given a job whose message is unacked, running under its lock ("other": another worker took it
    # over, so this run's writes are refused)
    tail = _finishing(state, "t1", holder=holder)
    # When its result goes with its last writes
    assert tail.flush() == flushed
    written = flushed == "written"
    # Then a written result took the record in the same round trip, and the ack of that tag will send
    # nothing; a refused run did nothing of it, and leaves the record to its ack
    assert bool(state.exists(keys.result("t1"))) is written
    assert bool(state.hexists("unacked", "tag-t1")) is not written
    assert (state.zscore("unacked_index", "tag-t1") is None) is written
    assert list(transport._dropped) == (["tag-t1"] if written else [])
