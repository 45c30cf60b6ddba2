"""The producer's pure steps: a batch validated whole (each problem named by its index) before any
broker I/O, and the idempotency claim's reply mapped back onto the batch."""

from __future__ import annotations

import socket

import pytest

from fleet.errors import InvalidRequest
from fleet.models import Tier
from fleet.producer import Client, claims, prepare, prepare_many, settle
from fleet.settings import Settings, load_settings


@pytest.fixture
def settings() -> Settings:
    return load_settings(env={})


def _dead_url() -> str:
    """A Redis URL nothing listens on: any broker I/O fails (BrokerError), so InvalidRequest proves
    the request was refused before the broker was touched."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


def test_every_bad_request_of_a_batch_is_named_by_its_index(settings: Settings) -> None:
    # Given a batch with one good request and four bad ones of different kinds
    batch = [
        {"prompt": "fine"},
        {"prompt": "   "},
        {"prompt": "x", "colour": "blue"},
        7,
        {"prompt": "x", "pipeline": "nope"},
    ]
    # When it is prepared, Then one error lists every problem under its request's index
    with pytest.raises(InvalidRequest) as info:
        prepare_many(settings, batch)
    errors = info.value.errors
    assert [line.split(":")[0] for line in errors] == [
        "requests[1].prompt",
        "requests[2].colour",
        "requests[3]",
        "requests[4].pipeline",
    ]
    assert errors[2] == "requests[3]: a task request must be a JSON object, got int"
    assert "unknown pipeline 'nope'" in errors[3]
    assert "requests[0]" not in str(info.value)


def test_a_whole_request_problem_is_named_by_its_index_alone(settings: Settings) -> None:
    with pytest.raises(InvalidRequest) as info:
        prepare_many(settings, [{"prompt": "a"}, {"kind": "no prompt"}])
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith("requests[1]: ")
    assert "requests[1]: request:" not in info.value.errors[0]


@pytest.mark.parametrize("not_a_list", ["a prompt", {"prompt": "a"}, b"{}"])
def test_a_single_request_is_not_a_batch(settings: Settings, not_a_list: object) -> None:
    with pytest.raises(InvalidRequest, match="a list of task requests"):
        prepare_many(settings, not_a_list)  # type: ignore[arg-type]


def test_a_bad_request_in_a_batch_is_refused_before_the_broker_is_touched(settings: Settings) -> None:
    # Given a client whose broker is unreachable
    client = Client(settings, redis_url=_dead_url())
    try:
        # When a batch holds one invalid request, Then it is InvalidRequest (not BrokerError): nothing
        # was written, not even the valid requests' idempotency keys
        with pytest.raises(InvalidRequest, match=r"requests\[2\]\.max_tokens"):
            client.submit_many(
                [{"prompt": "a", "idempotency_key": "k1"}, {"prompt": "b"}, {"prompt": "c", "max_tokens": 0}]
            )
        # And an empty batch needs no broker at all
        assert client.submit_many([]) == []
    finally:
        client.close()


def test_a_single_submit_keeps_its_errors_without_an_index(settings: Settings) -> None:
    client = Client(settings, redis_url=_dead_url())
    try:
        with pytest.raises(InvalidRequest) as info:
            client.submit({"prompt": ""})
        assert info.value.errors[0].startswith("prompt: ")
    finally:
        client.close()


def test_a_pinned_request_skips_the_router_and_a_pipeline_request_does_not(settings: Settings) -> None:
    pinned = prepare(settings, {"prompt": "a", "tier": "fast"})
    assert pinned.envelope.routing is not None and pinned.envelope.routing.tier is Tier.FAST
    assert pinned.envelope.routing.classifier == "pinned"
    assert pinned.span == {"fleet.task_id": pinned.id, "fleet.kind": None, "fleet.tier": "fast"}
    piped = prepare(settings, {"prompt": "a document", "pipeline": "extract_reason"})
    assert piped.envelope.routing is None and piped.payload["pipeline"] == "extract_reason"


def test_the_claim_maps_each_key_to_its_first_task_id(settings: Settings) -> None:
    # Given a batch: no key, key "a", key "b", key "a" again
    jobs = prepare_many(
        settings,
        [{"prompt": "0"}, {"prompt": "1", "idempotency_key": "a"}, {"prompt": "2", "idempotency_key": "b"},
         {"prompt": "3", "idempotency_key": "a"}],
    )  # fmt: skip
    names, args = claims(jobs, 60)
    assert names == ["fleet:idem:a", "fleet:idem:b", "fleet:idem:a"]
    assert args == ["60", jobs[1].id, jobs[2].id, jobs[3].id]
    # When the script says "a" is new here and "b" was submitted before (as task "old")
    ids, fresh = settle(jobs, [jobs[1].id.encode(), b"old", jobs[1].id.encode()])
    # Then the repeats get the first ids, and only the jobs under their own ids are sent
    assert ids == [jobs[0].id, jobs[1].id, "old", jobs[1].id]
    assert fresh == [jobs[0], jobs[1]]


def test_a_batch_without_keys_needs_no_claim(settings: Settings) -> None:
    jobs = prepare_many(settings, [{"prompt": "a"}, {"prompt": "b"}])
    assert claims(jobs, 60) == ([], [])
    assert settle(jobs, []) == ([jobs[0].id, jobs[1].id], jobs)


def test_routing_in_the_producer_skips_the_router_for_fast_jobs_or_all_of_them(settings: Settings) -> None:
    interactive = {"prompt": "Classify: is this spam?", "hints": {"latency_budget_ms": 800}}
    plain = {"prompt": "Add a docstring to parse_rate()", "hints": {"complexity": "low"}}
    # off (the default): the router worker routes every job that is not pinned
    assert prepare(settings, interactive).envelope.routing is None
    settings.router.in_producer = "fast"
    fast = prepare(settings, interactive).envelope.routing
    assert fast is not None and fast.tier is Tier.FAST and "routed in the producer" in fast.reasons[-1]
    assert prepare(settings, plain).envelope.routing is None  # not fast: the router's
    assert prepare(settings, {"prompt": "x", "pipeline": "extract_reason"}).envelope.routing is None
    settings.router.in_producer = "all"
    routed = prepare(settings, plain).envelope.routing
    assert routed is not None and routed.tier is Tier.MINI and routed.classifier != "pinned"
    settings.router.classifier = "llm"  # the LLM classifier runs on the router worker only
    assert prepare(settings, plain).envelope.routing is None
