"""The escalation record and its state machine, on a real Redis (no workers)."""

from __future__ import annotations

import threading

import pytest
import redis

from fleet import keys
from fleet.errors import EscalationError, EscalationNotFound, IllegalTransition
from fleet.escalations import EscalationStore, NewEscalation, result_for

ATTEMPT = {"link": "openai:gpt-4.1-mini", "provider": "openai", "model": "gpt-4.1-mini",
           "outcome": "overloaded", "http_status": 503, "latency_ms": 12.0, "cost_usd": 0.0}  # fmt: skip


def _new(
    task_id: str = "t1", *, tier: str = "mini", reason: str = "chain_exhausted", **kw: object
) -> NewEscalation:
    return NewEscalation(
        task_id=task_id, reason=reason, tier=tier, request={"prompt": "Extract the id", "kind": "extract"},
        routing={"tier": tier, "reasons": ["complexity hint: low"], "classifier": "rules"},
        attempts=[ATTEMPT], submitted_at=1000.0, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
def store(clean_redis: redis.Redis) -> EscalationStore:
    return EscalationStore(clean_redis, retention_days=1)


def _ids(client: redis.Redis, state: str) -> set[str]:
    return {i.decode() for i in client.zrange(keys.escalations_state(state), 0, -1)}


def test_a_redelivered_failure_is_recognised_not_recorded_twice(store: EscalationStore) -> None:
    # Given an escalation recorded for task t1
    first, created = store.create(_new())
    # When the same failure is recorded again (the message was redelivered)
    again, created_again = store.create(_new())
    # Then the first record comes back and nothing new is written
    assert created and not created_again
    assert again["id"] == first["id"]
    assert store.count() == 1 and store.count("open") == 1
    assert first["kind"] == "extract" and first["history"][0]["state"] == "open"


def test_claim_resolve_moves_between_state_sets_and_sets_retention(
    store: EscalationStore, clean_redis: redis.Redis
) -> None:
    record, _ = store.create(_new())
    # When alice claims it, then resolves it
    claimed = store.transition(record["id"], "claim", "alice")
    assert claimed["state"] == "claimed" and claimed["assignee"] == "alice"
    assert _ids(clean_redis, "claimed") == {record["id"]} and not _ids(clean_redis, "open")
    resolved = store.transition(record["id"], "resolve", "alice", answer="A-1234")
    # Then the record is resolved, its history tells the story, and it expires after the retention
    assert resolved["state"] == "resolved"
    assert resolved["resolution"]["answer"] == "A-1234" and resolved["resolution"]["by"] == "alice"
    assert [h["state"] for h in resolved["history"]] == ["open", "claimed", "resolved"]
    assert _ids(clean_redis, "resolved") == {record["id"]} and not _ids(clean_redis, "claimed")
    ttl = clean_redis.ttl(keys.escalation(record["id"]))
    assert 0 < ttl <= 86400


def test_someone_elses_claim_is_refused_with_who_and_since(store: EscalationStore) -> None:
    record, _ = store.create(_new())
    store.transition(record["id"], "claim", "alice")
    for action, extra in (("claim", {}), ("resolve", {"answer": "x"}), ("discard", {"reason": "dup"}),
                          ("retry", {}), ("release", {})):  # fmt: skip
        with pytest.raises(IllegalTransition, match=r"claimed by alice since \d{4}-\d\d-\d\d"):
            store.transition(record["id"], action, "bob", **extra)  # type: ignore[arg-type]
    # A claim by its holder is a no-op; a forced release by someone else is allowed
    assert store.transition(record["id"], "claim", "alice")["state"] == "claimed"
    released = store.transition(record["id"], "release", "bob", force=True)
    assert released["state"] == "open" and released["assignee"] is None
    assert "released alice's claim" in released["history"][-1]["note"]


def test_a_closed_escalation_refuses_every_action(store: EscalationStore) -> None:
    record, _ = store.create(_new())
    store.transition(record["id"], "discard", "carol", reason="duplicate of ticket 4411")
    with pytest.raises(IllegalTransition, match=r"already discarded by carol .*duplicate of ticket 4411"):
        store.transition(record["id"], "resolve", "alice", answer="too late")
    with pytest.raises(IllegalTransition, match="cannot release"):
        store.transition(record["id"], "release", "carol")
    with pytest.raises(EscalationNotFound):
        store.transition("nope", "claim", "alice")


def test_missing_answer_reason_or_name_is_an_error(store: EscalationStore) -> None:
    record, _ = store.create(_new())
    with pytest.raises(EscalationError, match="answer is required"):
        store.transition(record["id"], "resolve", "alice", answer="  ")
    with pytest.raises(EscalationError, match="reason is required"):
        store.transition(record["id"], "discard", "alice", reason="")
    with pytest.raises(EscalationError, match="name is required"):
        store.transition(record["id"], "claim", " ")
    assert store.get(record["id"])["state"] == "open"


def test_only_one_of_many_concurrent_claims_wins(store: EscalationStore) -> None:
    record, _ = store.create(_new())
    winners: list[str] = []
    refused: list[str] = []
    barrier = threading.Barrier(8)

    def claim(name: str) -> None:
        barrier.wait()
        try:
            store.transition(record["id"], "claim", name)
            winners.append(name)
        except IllegalTransition:
            refused.append(name)

    threads = [threading.Thread(target=claim, args=(f"person{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(refused) == 7
    assert store.get(record["id"])["assignee"] == winners[0]


def test_list_prunes_expired_records_and_filters(store: EscalationStore, clean_redis: redis.Redis) -> None:
    a, _ = store.create(_new("t1", tier="mini"))
    b, _ = store.create(_new("t2", tier="full"))
    store.transition(a["id"], "discard", "carol", reason="noise")
    clean_redis.delete(keys.escalation(a["id"]))  # as if its retention period had passed
    assert [r["id"] for r in store.list()] == [b["id"]]
    assert clean_redis.zscore(keys.escalations_index(), a["id"]) is None
    assert not _ids(clean_redis, "discarded")
    assert store.list(tier="mini") == [] and [r["id"] for r in store.list(tier="full")] == [b["id"]]
    assert store.list(state="claimed") == []


def test_stats_count_by_state_tier_and_reason(store: EscalationStore) -> None:
    a, _ = store.create(_new("t1", tier="mini"))
    store.create(_new("t2", tier="mini", reason="invalid_message"))
    c, _ = store.create(_new("t3", tier="full"))
    store.transition(c["id"], "claim", "alice")
    stats = store.stats(now=a["created_at"] + 60)
    assert stats["total"] == 3
    assert stats["by_state"]["open"] == 2 and stats["by_state"]["claimed"] == 1
    assert stats["by_tier"]["mini"]["open"] == 2 and stats["by_tier"]["full"]["claimed"] == 1
    assert stats["by_reason"]["chain_exhausted"] == {"open": 1, "claimed": 1, "resolved": 0, "retried": 0,
                                                     "discarded": 0}  # fmt: skip
    assert stats["oldest_open_id"] == a["id"] and stats["oldest_open_age_s"] == pytest.approx(60, abs=0.1)


def test_a_retried_job_that_fails_again_gets_a_new_linked_escalation(store: EscalationStore) -> None:
    first, _ = store.create(_new())
    store.transition(first["id"], "retry", "alice", tier="full")
    # When the retried run fails without saying it is a retry (a stale redelivery), it is a duplicate
    dup, created = store.create(_new())
    assert not created and dup["id"] == first["id"]
    # When the retried run fails, carrying retry_of
    second, created = store.create(_new(retry_of=first["id"]))
    # Then a new escalation is opened, linked both ways, and the task maps to it
    assert created and second["id"] != first["id"] and second["retry_of"] == first["id"]
    assert store.get(first["id"])["followed_by"] == second["id"]
    assert store.get(first["id"])["state"] == "retried"
    assert store.for_task("t1")["id"] == second["id"]  # type: ignore[index]
    # and its redelivery is recognised
    again, created = store.create(_new(retry_of=first["id"]))
    assert not created and again["id"] == second["id"]


def test_result_for_delivers_a_human_answer_or_a_discard(store: EscalationStore) -> None:
    record, _ = store.create(_new())
    resolved = store.transition(record["id"], "resolve", "alice", answer="A-1234")
    res = result_for(resolved, now=2000.0)
    assert res.status == "completed" and res.answer == "A-1234"
    assert res.resolved_by == "human" and res.resolver == "alice" and res.escalation_id == record["id"]
    assert res.tier == "mini" and res.routing is not None and res.attempts[0].http_status == 503
    assert res.kind == "extract" and res.latency_ms == pytest.approx(1_000_000.0)
    other, _ = store.create(_new("t9"))
    discarded = result_for(store.transition(other["id"], "discard", "bob", reason="spam"))
    assert discarded.status == "discarded" and discarded.reason == "spam" and discarded.answer is None
