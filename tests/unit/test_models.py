"""The wire contract: what is accepted, what is refused and how the refusal reads."""

from __future__ import annotations

import json

import pytest

from fleet.errors import InvalidRequest
from fleet.models import TaskRequest, TaskResult, Tier, validate_request


def test_minimal_request_gets_defaults() -> None:
    req = validate_request({"prompt": "hello"})
    assert req.hints.files == [] and req.tier is None and req.metadata == {}


def test_full_request_round_trips_through_json() -> None:
    data = {
        "prompt": "Extract the total",
        "system": "You extract fields.",
        "kind": "extract.invoice",
        "tier": "mini",
        "hints": {"complexity": "low", "latency_budget_ms": 1500, "files": ["a.py"]},
        "max_tokens": 200,
        "temperature": 0.2,
        "response_schema": {"type": "object", "required": ["total"]},
        "idempotency_key": "inv-1",
        "metadata": {"team": "billing"},
    }
    req = validate_request(json.dumps(data))
    assert req.tier is Tier.MINI
    assert validate_request(req.model_dump(mode="json")) == req


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({}, "give exactly one of prompt and messages (neither is set)"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "a"}]}, "both prompt and messages are set"),
        ({"messages": []}, "messages: List should have at least 1 item"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            "the last message must be the user's",
        ),
        ({"messages": [{"role": "robot", "content": "a"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "  "}]}, "the last user message must not be empty"),
        ({"prompt": "a", "stop": ["x"] * 5}, "stop: List should have at most 4 items"),
        ({"prompt": "a", "seed": "1"}, "seed: Input should be a valid integer"),
        ({"prompt": "a", "priority": 10}, "priority: Input should be less than or equal to 9"),
        ({"prompt": "a", "priority": -1}, "priority: Input should be greater than or equal to 0"),
        ({"prompt": "a", "priority": "9"}, "priority: Input should be a valid integer"),
        ({"prompt": ""}, "prompt must not be empty"),
        ({"prompt": "a", "extra": 1}, "extra: unknown field"),
        ({"prompt": "a", "hints": {"speed": 1}}, "hints.speed: unknown field"),
        ({"prompt": "a", "hints": {"requires_reasoning": "yes"}}, "hints.requires_reasoning"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "max_tokens": "10"}, "max_tokens"),
        ({"prompt": "a", "metadata": {"k": 1}}, "metadata.k"),
        ({"prompt": "a", "temperature": float("inf")}, "temperature"),
        ({"prompt": "a", "response_schema": {"type": 12}}, "response_schema"),
        ({"prompt": "\ud800"}, "prompt: Value error, not valid unicode"),
        ({"prompt": "a", "system": "\udfff"}, "system: "),
        (
            {"prompt": "a", "response_schema": {"": {"\ud800": None}}},
            "response_schema: Value error, cannot be sent as JSON (it holds a lone surrogate)",
        ),
        (
            {"prompt": "a", "response_schema": {"type": "object", "x": object()}},
            "response_schema: Value error, cannot be sent as JSON (a value JSON cannot hold)",
        ),
    ],
)
def test_bad_requests_name_the_field(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_request(data)
    assert fragment in str(info.value)


def test_prompt_limit_comes_from_config() -> None:
    validate_request({"prompt": "x" * 100}, max_prompt_bytes=100)
    with pytest.raises(InvalidRequest, match="101 bytes, over the limit of 100"):
        validate_request({"prompt": "x" * 101}, max_prompt_bytes=100)


def test_non_object_json_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        validate_request("[1, 2]")
    with pytest.raises(InvalidRequest):
        validate_request("{not json")


def test_result_latency() -> None:
    res = TaskResult(task_id="t", status="completed", submitted_at=10.0, finished_at=10.25)
    assert res.latency_ms == pytest.approx(250.0)
    assert not TaskRequest.model_fields["prompt"].is_required()  # prompt or messages


def test_a_conversation_is_read_as_its_last_user_turn_with_context() -> None:
    req = validate_request({"system": "Be kind.", "messages": [
        {"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Salut"}, {"role": "user", "content": "How are you?"},
    ]})  # fmt: skip
    assert req.ask == "How are you?" and [m.content for m in req.history] == ["Hi", "Salut"]
    assert req.instructions == "Be kind.\n\nAnswer in French."
    assert "assistant: Salut" in req.text


def test_the_size_limit_applies_to_the_whole_conversation() -> None:
    turns = [{"role": "user", "content": "x" * 600}, {"role": "assistant", "content": "y" * 600},
             {"role": "user", "content": "z"}]  # fmt: skip
    with pytest.raises(InvalidRequest, match="the conversation is 1201 bytes, over the limit of 1000 bytes"):
        validate_request({"messages": turns}, max_prompt_bytes=1000)
    assert validate_request({"messages": turns}, max_prompt_bytes=1201).ask == "z"


def test_a_schema_holding_python_values_json_can_hold_is_accepted() -> None:
    # A Python producer's schema: a set goes on the wire as a list, bytes as a string
    req = validate_request(
        {"prompt": "a", "response_schema": {"type": "string", "x-tags": {"a"}, "x-raw": b"1"}}
    )
    assert req.model_dump(mode="json")["response_schema"] == {"type": "string", "x-tags": ["a"], "x-raw": "1"}
