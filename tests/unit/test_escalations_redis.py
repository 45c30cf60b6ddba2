"""What only the Redis store has: its keys, sorted sets and TTLs, and records older fleets left there.

The behaviour both stores share is in test_escalations_store.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from fleet import keys
from fleet.errors import EscalationError, IllegalTransition, Reason
from fleet.escalations import EscalationRecord, NewEscalation, RedisEscalationStore
from fleet.models import Tier

BEFORE_TYPING = json.loads((Path(__file__).parent / "data" / "escalations_before_typing.json").read_text())


@pytest.fixture
def store(clean_redis: redis.Redis) -> RedisEscalationStore:
    return RedisEscalationStore(clean_redis, retention_days=1)


def _ids(client: redis.Redis, state: str) -> set[str]:
    return {i.decode() for i in client.zrange(keys.escalations_state(state), 0, -1)}


def _new(task_id: str = "t1") -> NewEscalation:
    return NewEscalation(task_id=task_id, reason=Reason.TIMEOUT, tier=Tier.FULL, request={"prompt": "p"})


def test_each_state_has_its_sorted_set_and_a_final_state_expires_with_its_task_mapping(
    store: RedisEscalationStore, clean_redis: redis.Redis
) -> None:
    # Given an open escalation: indexed, no expiry
    record, _ = store.create(_new())
    assert _ids(clean_redis, "open") == {record.id}
    assert clean_redis.zscore(keys.escalations_index(), record.id) == pytest.approx(record.created_at)
    assert clean_redis.get(keys.escalation_by_task("t1")) == record.id.encode()
    assert clean_redis.ttl(keys.escalation(record.id)) == -1
    # When it is claimed, then retried
    store.transition(record.id, "claim", "alice")
    assert _ids(clean_redis, "claimed") == {record.id} and not _ids(clean_redis, "open")
    store.transition(record.id, "retry", "alice")
    # Then record and mapping expire after the retention
    assert _ids(clean_redis, "retried") == {record.id} and not _ids(clean_redis, "claimed")
    assert 0 < clean_redis.ttl(keys.escalation(record.id)) <= 86400
    assert 0 < clean_redis.ttl(keys.escalation_by_task("t1")) <= 86400
    # And marking it notified keeps that expiry
    store.mark_notified(record.id)
    assert 0 < clean_redis.ttl(keys.escalation(record.id)) <= 86400
    # When the retry could not be enqueued and it is reopened, Then neither expires any more
    store.reopen(record.id, "alice", "broker down")
    assert clean_redis.ttl(keys.escalation(record.id)) == -1
    assert clean_redis.ttl(keys.escalation_by_task("t1")) == -1
    assert _ids(clean_redis, "open") == {record.id} and not _ids(clean_redis, "retried")


def test_a_new_record_is_stored_in_the_shape_the_dict_store_wrote(
    store: RedisEscalationStore, clean_redis: redis.Redis
) -> None:
    record, _ = store.create(_new())
    raw = json.loads(clean_redis.get(keys.escalation(record.id)) or b"{}")
    before = next(d for d in BEFORE_TYPING["records"] if d["state"] == "open" and d["routing"] is None)
    assert list(raw) == list(before)
    assert list(raw["history"][0]) == list(before["history"][0])


def test_records_the_dict_store_left_in_redis_are_listed_and_worked(
    store: RedisEscalationStore, clean_redis: redis.Redis
) -> None:
    # Given the records an older fleet stored, indexed as it indexed them
    for document in BEFORE_TYPING["records"]:
        clean_redis.set(keys.escalation(document["id"]), json.dumps(document))
        clean_redis.zadd(keys.escalations_index(), {document["id"]: document["created_at"]})
        clean_redis.zadd(keys.escalations_state(document["state"]), {document["id"]: document["created_at"]})
        clean_redis.set(keys.escalation_by_task(document["task_id"]), document["id"])
    # When people list them and act on an open one
    listed = store.list()
    opened = next(r for r in store.list(state="open") if r.tier is Tier.MINI)
    resolved = store.transition(opened.id, "resolve", "alice", answer="done")
    # Then every one is there, oldest first, and the open one moves on
    oldest_first = sorted(BEFORE_TYPING["records"], key=lambda d: d["created_at"])
    assert [r.id for r in listed] == [d["id"] for d in oldest_first]
    assert resolved.state == "resolved" and store.stats().by_state["resolved"] == 2


def test_a_change_made_meanwhile_makes_a_transition_read_the_record_again(
    store: RedisEscalationStore, clean_redis: redis.Redis
) -> None:
    # Given alice resolving an open escalation, and bob claiming it between her read and her write
    record, _ = store.create(_new())
    bob = RedisEscalationStore(clean_redis)
    seen: list[str] = []

    def meanwhile(current: EscalationRecord) -> None:
        seen.append(current.state)
        if len(seen) == 1:
            bob.transition(record.id, "claim", "bob")

    # When her transition commits, Then it fails, reads again, and is refused: bob holds it now
    with pytest.raises(IllegalTransition, match="claimed by bob"):
        store.transition(record.id, "resolve", "alice", answer="x", check=meanwhile)
    assert seen == ["open"]
    assert store.get(record.id).assignee == "bob" and store.get(record.id).resolution is None


def test_a_record_that_never_stops_changing_is_an_error_not_a_loop(
    store: RedisEscalationStore, clean_redis: redis.Redis
) -> None:
    record, _ = store.create(_new())
    other = RedisEscalationStore(clean_redis)

    def meanwhile(current: EscalationRecord) -> None:
        other.mark_notified(record.id)

    with pytest.raises(EscalationError, match=f"escalation {record.id} is changing too fast; try again"):
        store.transition(record.id, "claim", "alice", check=meanwhile)
    assert store.get(record.id).state == "open"
