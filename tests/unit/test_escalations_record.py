"""The typed escalation record: it reads what older fleets stored, and writes the same JSON shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleet.errors import EscalationError, Reason
from fleet.escalations import EscalationRecord, NewEscalation, parse_state, result_for
from fleet.escalations.record import MAX_RAW_BODY
from fleet.models import Attempt, Tier

#: Records exactly as the dict-based store (before typing) wrote them to Redis, one per kind of step.
BEFORE_TYPING = json.loads((Path(__file__).parent / "data" / "escalations_before_typing.json").read_text())

ATTEMPT = {
    "link": "openai:gpt-4.1-mini", "provider": "openai", "model": "gpt-4.1-mini", "outcome": "overloaded",
    "input_tokens": 7, "output_tokens": 3, "cost_usd": 0.002,
}  # fmt: skip


def stored(**fields: Any) -> dict[str, Any]:
    """A minimal stored record, as the oldest fleets wrote it."""
    return {
        "id": "e1",
        "task_id": "t1",
        "state": "open",
        "created_at": 1000.0,
        "updated_at": 1000.0,
        **fields,
    }


@pytest.mark.parametrize("document", BEFORE_TYPING["records"], ids=lambda d: f"{d['task_id']}-{d['state']}")
def test_every_record_the_dict_store_wrote_loads_and_dumps_to_the_same_json(document: dict[str, Any]) -> None:
    # Given a record as the store wrote it before records were typed
    raw = json.dumps(document)
    # When it is loaded and dumped again (as the API and --json print it, as the store writes it)
    record = EscalationRecord.load(raw)
    # Then nothing is lost or reordered; the only additions are the attempts' fields added since, at
    # their defaults (an old attempt was a job's answer, with no cache or reasoning tokens)
    dumped = record.model_dump(mode="json")
    for attempt in dumped["attempts"]:
        assert attempt.pop("purpose") == "answer"
        for added in ("cached_input_tokens", "cache_write_tokens", "reasoning_tokens"):
            assert attempt.pop(added) == 0
        assert attempt.pop("batch_id") is None
    assert dumped == document
    assert list(dumped) == list(document)
    assert json.loads(record.dump())["attempts"] == record.model_dump(mode="json")["attempts"]
    assert [list(h.model_dump(mode="json")) for h in record.history] == [list(h) for h in document["history"]]


def test_the_typed_fields_of_a_stored_record() -> None:
    resolved = next(d for d in BEFORE_TYPING["records"] if d["state"] == "resolved")
    record = EscalationRecord.load(json.dumps(resolved))
    assert record.reason is Reason.CHAIN_EXHAUSTED and record.tier is Tier.MINI
    assert record.routing is not None and record.routing.tier is Tier.MINI
    assert isinstance(record.attempts[0], Attempt) and record.attempts[0].http_status == 503
    assert record.resolution is not None and record.resolution.answer == "A-1"
    assert [h.action for h in record.history] == [None, "claim", "release", "resolve"]


def test_loading_is_lenient_where_an_old_value_no_longer_fits() -> None:
    # Given a record with values this version does not know, and without fields added later
    record = EscalationRecord.model_validate(
        stored(
            reason="reason_from_the_future", tier="huge", kind=5, surprise={"a": 1},
            request=[1, 2], routing={"tier": "full", "reasons": ["x"], "legacy": True},
            attempts=[{**ATTEMPT, "legacy": 1}, {"link": "half an attempt"}],
            history=[{"at": 1000.0, "state": "open", "by": "fleet", "legacy": 1}],
            resolution=None,
        )
    )  # fmt: skip
    # Then it loads: unknown reason and tier mapped, extra fields ignored, what cannot be read dropped
    assert record.reason is Reason.CHAIN_EXHAUSTED and record.tier is None and record.kind is None
    assert record.request == "[1, 2]"
    assert record.routing is not None and record.routing.tier is Tier.FULL
    assert [a.link for a in record.attempts] == ["openai:gpt-4.1-mini"]
    assert "surprise" not in record.model_dump() and "legacy" not in json.dumps(
        record.model_dump(mode="json")
    )
    assert record.retry_of is None and record.followed_by is None and record.notified_at is None
    assert record.queue is None and record.trace_id is None and record.detail == ""


def test_a_known_reason_string_is_kept() -> None:
    assert EscalationRecord.model_validate(stored(reason="poison_message")).reason is Reason.POISON_MESSAGE


def test_a_new_escalation_keeps_a_raw_body_as_bounded_text_and_any_reason_code() -> None:
    # Given what a consumer has when a message does not decode
    new = NewEscalation(
        task_id="p1", reason="no_such_code", tier="router", request=b"\xff" * (MAX_RAW_BODY + 9)
    )  # type: ignore[arg-type]
    # Then the worker can always say so
    assert new.reason is Reason.CHAIN_EXHAUSTED and new.tier is None
    assert isinstance(new.request, str) and len(new.request) == MAX_RAW_BODY and "\ufffd" in new.request
    record = EscalationRecord.opened("e1", new, now=5.0)
    assert record.kind is None and record.history[0].note == "chain_exhausted"


def test_an_opened_record_takes_its_kind_from_the_request_and_bounds_the_detail() -> None:
    new = NewEscalation(task_id="t1", reason=Reason.TIMEOUT, request={"prompt": "p", "kind": "extract"},
                        detail="d" * 5000)  # fmt: skip
    record = EscalationRecord.opened("e1", new, now=5.0)
    assert record.kind == "extract" and len(record.detail) == 2000
    assert (record.state, record.created_at, record.updated_at) == ("open", 5.0, 5.0)


def test_result_for_delivers_a_human_answer_with_the_attempts_totals() -> None:
    # Given a resolved record with two attempts
    record = EscalationRecord.model_validate(
        stored(state="resolved", tier="mini", request={"prompt": "p", "kind": "extract"}, kind="extract",
               attempts=[ATTEMPT, ATTEMPT], submitted_at=1000.0,
               resolution={"action": "resolve", "by": "alice", "at": 1500.0, "answer": "A-1234"})
    )  # fmt: skip
    # When its result is built
    res = result_for(record, now=2000.0)
    # Then the producer gets the person's answer, and the tokens and cost of the models' attempts
    assert res.status == "completed" and res.answer == "A-1234" and res.reason is None
    assert res.resolved_by == "human" and res.resolver == "alice" and res.escalation_id == "e1"
    assert res.tier is Tier.MINI and res.kind == "extract" and len(res.attempts) == 2
    assert (res.input_tokens, res.output_tokens, res.cost_usd) == (14, 6, 0.004)
    assert res.latency_ms == pytest.approx(1_000_000.0)


def test_result_for_a_discarded_record_says_why_and_has_no_answer() -> None:
    record = EscalationRecord.model_validate(
        stored(state="discarded", resolution={"action": "discard", "by": "bob", "at": 2.0, "reason": "spam"})
    )
    res = result_for(record)
    assert res.status == "discarded" and res.reason == "spam" and res.answer is None and res.resolver == "bob"
    assert res.finished_at is not None and res.cost_usd == 0.0


def test_a_resolution_and_a_history_entry_dump_only_the_keys_of_their_action() -> None:
    resolution = {"action": "retry", "by": "a", "at": 1.0, "tier": None, "answer": "x"}
    history = [{"at": 1.0, "state": "retried", "by": "a", "action": "retry", "note": None}]
    record = EscalationRecord.model_validate(stored(state="retried", resolution=resolution, history=history))
    dumped = record.model_dump(mode="json")
    assert dumped["resolution"] == {"action": "retry", "by": "a", "at": 1.0, "tier": None}
    assert dumped["history"] == [{"at": 1.0, "state": "retried", "by": "a", "action": "retry"}]


def test_parse_state_names_the_states_it_knows() -> None:
    assert parse_state("claimed") == "claimed"
    with pytest.raises(EscalationError, match="unknown state 'lost': expected one of open, claimed"):
        parse_state("lost")
