"""The inbox's verbs and their effects on the job, on the in-memory escalation store (no server).

The broker URL points at a closed port: nothing here may need it, except the retry whose enqueue
is meant to fail.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from fleet import keys
from fleet.errors import BrokerError, EscalationError, IllegalTransition, Reason
from fleet.escalations import EscalationRecord, MemoryEscalationStore, NewEscalation
from fleet.inbox import Inbox
from fleet.models import Attempt, TaskResult, Tier
from fleet.settings import load_settings

UNREACHABLE = "redis://127.0.0.1:9/0"
ATTEMPT = Attempt(link="openai:gpt-4.1-mini", provider="openai", model="gpt-4.1-mini", outcome="timeout",
                  input_tokens=5, output_tokens=0, cost_usd=0.001)  # fmt: skip


@pytest.fixture
def store() -> MemoryEscalationStore:
    return MemoryEscalationStore()


@pytest.fixture
def inbox(store: MemoryEscalationStore) -> Iterator[Inbox]:
    inbox = Inbox(load_settings(env={}), redis_url=UNREACHABLE, store=store)
    yield inbox
    inbox.close()


def escalated(store: MemoryEscalationStore, request: object = None) -> EscalationRecord:
    if request is None:
        request = {"prompt": "Extract the id", "kind": "extract"}
    new = NewEscalation(
        task_id="t1", reason=Reason.TIMEOUT, tier=Tier.MINI, attempts=[ATTEMPT], request=request
    )
    record, _ = store.create(new)
    return record


def delivered(store: MemoryEscalationStore, task_id: str) -> TaskResult:
    """The task's result as the inbox wrote it to the result backend (Celery's SUCCESS meta)."""
    meta = json.loads(store.value(keys.result(task_id)))
    assert meta["status"] == "SUCCESS" and meta["task_id"] == task_id
    return TaskResult.model_validate(meta["result"])


def test_a_persons_answer_is_delivered_as_the_tasks_result_with_the_transition(
    inbox: Inbox, store: MemoryEscalationStore
) -> None:
    # Given an escalated job
    record = escalated(store)
    # When alice resolves it
    resolved = inbox.resolve(record.id, "A-1234", "alice")
    # Then the task's result carries her answer, and waiting producers are told
    result = delivered(store, "t1")
    assert resolved.state == "resolved" and result.status == "completed" and result.answer == "A-1234"
    assert result.resolved_by == "human" and result.resolver == "alice" and result.escalation_id == record.id
    assert result.kind == "extract" and result.cost_usd == 0.001 and result.input_tokens == 5
    assert [channel for channel, _ in store.published] == [keys.result("t1")]


def test_a_discard_is_delivered_with_its_reason(inbox: Inbox, store: MemoryEscalationStore) -> None:
    record = escalated(store)
    inbox.discard(record.id, "duplicate of ticket 4411", "bob")
    result = delivered(store, "t1")
    assert (
        result.status == "discarded" and result.reason == "duplicate of ticket 4411" and result.answer is None
    )


def test_a_refused_action_delivers_nothing(inbox: Inbox, store: MemoryEscalationStore) -> None:
    # Given an escalation alice holds
    record = escalated(store)
    inbox.claim(record.id, "alice")
    # When bob tries to answer it, Then he is refused and the task has no result from him
    with pytest.raises(IllegalTransition, match="claimed by alice"):
        inbox.resolve(record.id, "mine", "bob")
    assert store.value(keys.result("t1")) is None and store.published == []


def test_a_request_that_does_not_validate_cannot_be_retried(
    inbox: Inbox, store: MemoryEscalationStore
) -> None:
    # Given a poison message's escalation (its body was not a task request)
    record = escalated(store, request="\x00garbage")
    # When someone retries it, Then it is refused with what to do instead, and stays open
    with pytest.raises(IllegalTransition, match=r"not a valid task request .* resolve or discard it instead"):
        inbox.retry(record.id, "alice")
    assert store.get(record.id).state == "open" and len(store.get(record.id).history) == 1


def test_a_retry_on_an_unknown_tier_is_an_error(inbox: Inbox, store: MemoryEscalationStore) -> None:
    record = escalated(store)
    with pytest.raises(
        EscalationError, match="unknown tier 'huge': expected one of mini, standard, full, fast"
    ):
        inbox.retry(record.id, "alice", tier="huge")
    assert store.get(record.id).state == "open"


def test_a_retry_that_cannot_be_enqueued_is_open_again(inbox: Inbox, store: MemoryEscalationStore) -> None:
    # Given an escalation alice holds, and a broker that cannot be reached
    record = escalated(store)
    inbox.claim(record.id, "alice")
    # When she retries it on the full tier
    with pytest.raises(BrokerError, match="cannot connect"):
        inbox.retry(record.id, "alice", tier="full")
    # Then the escalation is open again, and its history says why
    after = store.get(record.id)
    assert after.state == "open" and after.assignee is None and after.resolution is None
    assert [h.state for h in after.history] == ["open", "claimed", "retried", "open"]
    assert after.history[-1].note is not None and "the retry could not be enqueued" in after.history[-1].note
