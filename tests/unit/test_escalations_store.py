"""The escalation store's contract: the same Given/When/Then against the in-memory store and Redis.

The memory store is the Redis store's twin for unit tests; these tests are what keeps the two
alike. Redis-only details (key names, sorted sets, TTLs on keys) are in test_escalations_redis.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from fleet import keys
from fleet.errors import EscalationError, EscalationNotFound, IllegalTransition, Reason
from fleet.escalations import (
    CommitSink,
    EscalationRecord,
    EscalationStore,
    MemoryEscalationStore,
    NewEscalation,
    RedisEscalationStore,
)
from fleet.escalations.record import MAX_ANSWER, MAX_NAME, MAX_REASON
from fleet.models import Attempt, RoutingDecision, Tier

ATTEMPT = Attempt(
    link="openai:gpt-4.1-mini", provider="openai", model="gpt-4.1-mini", outcome="overloaded",
    http_status=503, latency_ms=12.0, input_tokens=7, output_tokens=3, cost_usd=0.002,
)  # fmt: skip
DAY = 86400


def new(
    task_id: str = "t1", *, tier: Tier = Tier.MINI, reason: Reason = Reason.CHAIN_EXHAUSTED, **kw: Any
) -> NewEscalation:
    return NewEscalation(
        task_id=task_id, reason=reason, tier=tier, request={"prompt": "Extract the id", "kind": "extract"},
        routing=RoutingDecision(tier=tier, reasons=["complexity hint: low"]), attempts=[ATTEMPT],
        submitted_at=1000.0, **kw,
    )  # fmt: skip


class MemoryBackend:
    """The in-memory store on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.store: EscalationStore = MemoryEscalationStore(retention_days=1, clock=self.clock)

    def clock(self) -> float:
        self.now += 0.001  # time moves on between two calls, as it does for Redis
        return self.now

    def pass_retention(self) -> None:
        self.now += DAY + 1

    def ttl(self, key: str) -> float | None:
        assert isinstance(self.store, MemoryEscalationStore)
        return self.store.ttl(key)

    def value(self, key: str) -> Any:
        assert isinstance(self.store, MemoryEscalationStore)
        return self.store.value(key)


class RedisBackend:
    """The Redis store on the session's broker; time passes by shortening every TTL to 1 ms."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.store: EscalationStore = RedisEscalationStore(client, retention_days=1)

    def pass_retention(self) -> None:
        for key in self.client.scan_iter():
            if self.client.ttl(key) > 0:
                self.client.pexpire(key, 1)
        time.sleep(0.01)

    def ttl(self, key: str) -> float | None:
        ttl = int(self.client.ttl(key))
        return float(ttl) if ttl >= 0 else None

    def value(self, key: str) -> Any:
        raw = self.client.get(key)
        return raw.decode() if isinstance(raw, bytes) else raw


Backend = MemoryBackend | RedisBackend


def _ids(records: list[EscalationRecord]) -> list[str]:
    return [r.id for r in records]


class StoreContract:
    """What every escalation store does; a subclass per store supplies the ``backend`` fixture."""

    @pytest.fixture
    def store(self, backend: Backend) -> EscalationStore:
        return backend.store

    def test_a_redelivered_failure_is_recognised_not_recorded_twice(self, store: EscalationStore) -> None:
        # Given an escalation recorded for task t1
        first, created = store.create(new())
        # When the same failure is recorded again (the message was redelivered)
        again, created_again = store.create(new())
        # Then the first record comes back and nothing new is written
        assert created and not created_again
        assert again == first
        assert store.count() == 1 and store.count("open") == 1
        assert first.kind == "extract" and first.state == "open" and first.attempts == [ATTEMPT]
        assert [(h.state, h.by, h.note) for h in first.history] == [("open", "fleet", "chain_exhausted")]
        assert store.for_task("t1") == first and store.get(first.id) == first

    def test_claim_then_resolve_moves_between_states_and_starts_the_retention(self, backend: Backend) -> None:
        store = backend.store
        record, _ = store.create(new())
        # When alice claims it
        claimed = store.transition(record.id, "claim", "alice")
        # Then it is hers, and listed as claimed only
        assert claimed.state == "claimed" and claimed.assignee == "alice" and claimed.claimed_at is not None
        assert _ids(store.list(state="claimed")) == [record.id] and store.list(state="open") == []
        assert backend.ttl(keys.escalation(record.id)) is None
        # When she resolves it
        resolved = store.transition(record.id, "resolve", "alice", answer="A-1234")
        # Then the record is resolved, its history tells the story, and it expires after the retention
        assert resolved.state == "resolved" and resolved.resolution is not None
        assert resolved.resolution.answer == "A-1234" and resolved.resolution.by == "alice"
        assert [(h.state, h.action) for h in resolved.history] == [
            ("open", None), ("claimed", "claim"), ("resolved", "resolve")
        ]  # fmt: skip
        assert _ids(store.list(state="resolved")) == [record.id] and store.count("claimed") == 0
        assert store.get(record.id) == resolved
        ttl = backend.ttl(keys.escalation(record.id))
        assert ttl is not None and 0 < ttl <= DAY

    def test_someone_elses_claim_is_refused_with_who_and_since(self, store: EscalationStore) -> None:
        # Given an escalation alice claimed
        record, _ = store.create(new())
        store.transition(record.id, "claim", "alice")
        # When bob tries any action, Then he is told who holds it and since when
        for action, extra in (("claim", {}), ("resolve", {"answer": "x"}), ("discard", {"reason": "dup"}),
                              ("retry", {}), ("release", {})):  # fmt: skip
            with pytest.raises(
                IllegalTransition, match=r"claimed by alice since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
            ):
                store.transition(record.id, action, "bob", **extra)  # type: ignore[arg-type]
        # And a claim by its holder changes nothing; a forced release by someone else is allowed
        assert store.transition(record.id, "claim", "alice") == store.get(record.id)
        assert len(store.get(record.id).history) == 2
        released = store.transition(record.id, "release", "bob", force=True)
        assert released.state == "open" and released.assignee is None and released.claimed_at is None
        assert released.history[-1].note == "released alice's claim" and released.history[-1].by == "bob"

    def test_a_closed_escalation_refuses_every_action(self, store: EscalationStore) -> None:
        # Given a discarded escalation
        record, _ = store.create(new())
        store.transition(record.id, "discard", "carol", reason="  duplicate of ticket 4411 ")
        # When anyone acts on it, Then they are told who closed it, when and why
        closed = r"already discarded by carol at .* UTC \(reason: duplicate of ticket 4411\)"
        with pytest.raises(IllegalTransition, match=closed):
            store.transition(record.id, "resolve", "alice", answer="too late")
        with pytest.raises(
            IllegalTransition, match=f"cannot release escalation {record.id}: it was already discarded"
        ):
            store.transition(record.id, "release", "carol")
        assert store.get(record.id).resolution.reason == "duplicate of ticket 4411"  # type: ignore[union-attr]
        # And an id nobody knows is not found
        with pytest.raises(EscalationNotFound):
            store.transition("nope", "claim", "alice")
        with pytest.raises(EscalationNotFound):
            store.get("nope")
        assert store.get_or_none("nope") is None and store.for_task("nope") is None

    def test_an_action_from_the_wrong_state_names_the_state(self, store: EscalationStore) -> None:
        record, _ = store.create(new())
        with pytest.raises(IllegalTransition, match=f"cannot release escalation {record.id}: it is open$"):
            store.transition(record.id, "release", "alice")
        retried = store.transition(record.id, "retry", "alice", tier=Tier.FULL)
        assert retried.resolution is not None and retried.resolution.tier == Tier.FULL
        assert retried.history[-1].note == "retried on tier full"
        with pytest.raises(IllegalTransition, match="it was already retried by alice"):
            store.transition(record.id, "claim", "bob")

    def test_missing_or_oversized_values_are_errors_and_change_nothing(self, store: EscalationStore) -> None:
        record, _ = store.create(new())
        with pytest.raises(EscalationError, match="answer is required"):
            store.transition(record.id, "resolve", "alice", answer="  ")
        with pytest.raises(EscalationError, match=f"over {MAX_ANSWER}"):
            store.transition(record.id, "resolve", "alice", answer="x" * (MAX_ANSWER + 1))
        with pytest.raises(EscalationError, match="reason is required"):
            store.transition(record.id, "discard", "alice", reason="")
        with pytest.raises(EscalationError, match="name is required"):
            store.transition(record.id, "claim", " ")
        with pytest.raises(EscalationError, match=f"at most {MAX_NAME} characters"):
            store.transition(record.id, "claim", "a" * (MAX_NAME + 1))
        assert store.get(record.id) == record
        # A long reason is kept, cut to its limit
        discarded = store.transition(record.id, "discard", " bob ", reason="r" * (MAX_REASON + 10))
        assert discarded.resolution is not None and discarded.resolution.reason == "r" * MAX_REASON
        assert discarded.assignee == "bob"

    def test_only_one_of_many_concurrent_claims_wins(self, store: EscalationStore) -> None:
        record, _ = store.create(new())
        winners: list[str] = []
        refused: list[str] = []
        barrier = threading.Barrier(8)

        def claim(name: str) -> None:
            barrier.wait()
            try:
                store.transition(record.id, "claim", name)
                winners.append(name)
            except IllegalTransition:
                refused.append(name)

        threads = [threading.Thread(target=claim, args=(f"person{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1 and len(refused) == 7
        assert store.get(record.id).assignee == winners[0]

    def test_list_filters_and_prunes_what_passed_its_retention(self, backend: Backend) -> None:
        # Given a discarded, an open and a claimed escalation
        store = backend.store
        a, _ = store.create(new("t1", tier=Tier.MINI))
        b, _ = store.create(new("t2", tier=Tier.FULL))
        c, _ = store.create(new("t3", tier=Tier.MINI))
        store.transition(a.id, "discard", "carol", reason="noise")
        store.transition(c.id, "claim", "alice")
        # When the retention period passes
        backend.pass_retention()
        # Then the closed one is gone with its task mapping; the index counts it until a listing prunes it
        assert store.get_or_none(a.id) is None and store.for_task("t1") is None
        assert store.count() == 3 and store.count("discarded") == 1
        assert _ids(store.list()) == [b.id, c.id]
        assert store.count() == 2 and store.count("discarded") == 0
        # And listings filter by tier and state, oldest first, up to the limit
        assert _ids(store.list(tier=Tier.MINI)) == [c.id] and _ids(store.list(tier=Tier.FULL)) == [b.id]
        assert _ids(store.list(state="claimed")) == [c.id] and store.list(state="resolved") == []
        assert _ids(store.list(limit=1)) == [b.id]

    def test_stats_count_by_state_tier_and_reason(self, store: EscalationStore) -> None:
        a, _ = store.create(new("t1", tier=Tier.MINI))
        store.create(new("t2", tier=Tier.MINI, reason=Reason.INVALID_MESSAGE))
        c, _ = store.create(new("t3", tier=Tier.FULL))
        store.transition(c.id, "claim", "alice")
        stats = store.stats(now=a.created_at + 60)
        assert stats.total == 3
        assert stats.by_state == {"open": 2, "claimed": 1, "resolved": 0, "retried": 0, "discarded": 0}
        assert stats.by_tier["mini"]["open"] == 2 and stats.by_tier["full"]["claimed"] == 1
        assert list(stats.by_tier) == ["full", "mini"]
        assert stats.by_reason["chain_exhausted"] == {"open": 1, "claimed": 1, "resolved": 0, "retried": 0,
                                                      "discarded": 0}  # fmt: skip
        assert stats.by_reason["invalid_message"]["open"] == 1
        assert stats.oldest_open_id == a.id and stats.oldest_open_age_s == pytest.approx(60, abs=0.1)

    def test_a_retried_job_that_fails_again_gets_a_new_linked_escalation(
        self, store: EscalationStore
    ) -> None:
        # Given an escalation; a failure naming it as retry_of before people retried it is a duplicate
        first, _ = store.create(new())
        assert store.create(new(retry_of=first.id)) == (first, False)
        # When people retry it
        store.transition(first.id, "retry", "alice", tier=Tier.FULL)
        # When the retried run fails without saying it is a retry (a stale redelivery), it is a duplicate
        dup, created = store.create(new())
        assert not created and dup.id == first.id
        # When the retried run fails, carrying retry_of
        second, created = store.create(new(retry_of=first.id))
        # Then a new escalation is opened, linked both ways, and the task maps to it
        assert created and second.id != first.id and second.retry_of == first.id and second.state == "open"
        assert second.history[0].note == f"chain_exhausted (again, after retry of {first.id})"
        assert store.get(first.id).followed_by == second.id and store.get(first.id).state == "retried"
        assert store.for_task("t1") == second
        # And its redelivery is recognised
        again, created = store.create(new(retry_of=first.id))
        assert not created and again.id == second.id
        assert store.count() == 2

    def test_a_retry_that_could_not_be_enqueued_is_reopened_and_kept(self, backend: Backend) -> None:
        # Given a retried escalation whose message could not be enqueued
        store = backend.store
        record, _ = store.create(new())
        store.transition(record.id, "claim", "alice")
        store.transition(record.id, "retry", "alice")
        # When the inbox reopens it
        reopened = store.reopen(record.id, "alice", "the retry could not be enqueued")
        # Then it is open again, nobody's, unresolved, and it no longer expires
        assert reopened is not None and reopened.state == "open"
        assert reopened.assignee is None and reopened.claimed_at is None and reopened.resolution is None
        assert (reopened.history[-1].state, reopened.history[-1].note) == (
            "open",
            "the retry could not be enqueued",
        )
        assert _ids(store.list(state="open")) == [record.id] and store.count("retried") == 0
        backend.pass_retention()
        assert store.get(record.id) == reopened and store.for_task("t1") == reopened
        # And reopening what is not retried does nothing
        assert store.reopen(record.id, "alice", "again") is None and store.get(record.id) == reopened
        assert store.reopen("nope", "alice", "x") is None

    def test_on_commit_writes_commit_with_the_transition_or_not_at_all(self, backend: Backend) -> None:
        store = backend.store
        record, _ = store.create(new())

        def deliver(sink: CommitSink, after: EscalationRecord) -> None:
            sink.set(f"test:result:{after.task_id}", after.state)

        def broken(sink: CommitSink, after: EscalationRecord) -> None:
            sink.set("test:half-done", "x")
            raise RuntimeError("the hook failed")

        def refuse(before: EscalationRecord) -> None:
            raise IllegalTransition("not this one")

        # When a check refuses the action, or the hook fails, Then nothing is written
        with pytest.raises(IllegalTransition, match="not this one"):
            store.transition(record.id, "resolve", "alice", answer="42", check=refuse, on_commit=deliver)
        with pytest.raises(RuntimeError):
            store.transition(record.id, "resolve", "alice", answer="42", on_commit=broken)
        assert store.get(record.id) == record
        assert backend.value("test:half-done") is None and backend.value("test:result:t1") is None
        # When the hook succeeds, Then its writes land with the new state
        store.transition(record.id, "resolve", "alice", answer="42", on_commit=deliver)
        assert backend.value("test:result:t1") == "resolved"

    def test_mark_notified_keeps_the_retention(self, backend: Backend) -> None:
        store = backend.store
        record, _ = store.create(new())
        store.transition(record.id, "resolve", "alice", answer="42")
        assert store.mark_notified(record.id)
        notified = store.get(record.id)
        assert notified.notified_at is not None and notified.state == "resolved"
        ttl = backend.ttl(keys.escalation(record.id))
        assert ttl is not None and 0 < ttl <= DAY
        assert not store.mark_notified("nope")


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def backend(self) -> Backend:
        return MemoryBackend()


class TestRedisStore(StoreContract):
    @pytest.fixture
    def backend(self, clean_redis: redis.Redis) -> Backend:
        return RedisBackend(clean_redis)
