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


def test_a_stored_result_takes_its_messages_unacked_record_with_it(
    state: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "_dropped", type(transport._dropped)())
    # Given a job running under its lock, whose message is unacked
    tail = _finishing(state, "t1", holder="me")
    # When its result goes with its last writes
    assert tail.flush() == "written"
    # Then the record went in the same round trip, and the ack of that tag will send nothing
    assert state.exists(keys.result("t1")) and not state.exists(keys.running("t1"))
    assert not state.hexists("unacked", "tag-t1") and state.zscore("unacked_index", "tag-t1") is None
    assert list(transport._dropped) == ["tag-t1"]


def test_a_superseded_run_leaves_the_record_to_its_ack(
    state: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "_dropped", type(transport._dropped)())
    # Given a job another worker took over (its lock names that worker)
    tail = _finishing(state, "t2", holder="other")
    # When this run's writes are refused, nothing of them happened: the record stays for the ack
    assert tail.flush() == "superseded"
    assert state.hexists("unacked", "tag-t2") and not transport._dropped
