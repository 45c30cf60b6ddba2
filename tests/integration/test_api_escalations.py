"""The HTTP API in-process (starlette's TestClient) against the real fleet: tasks, escalations, auth."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleet.api import create_api
from fleet.escalations import NewEscalation, RedisEscalationStore
from fleet.models import TaskResult

from .conftest import RunningFleet
from .procs import run

pytestmark = pytest.mark.integration

TOKEN = "test-token-6f1c2a"


def fail_every_model(fleet: RunningFleet) -> None:
    """Every model of every provider answers 400: each chain is exhausted at once, no breaker opens."""
    models = {m for p in fleet.settings.providers.values() for m in p.models}
    fleet.mock_config(faults_by_model={m: {"bad_request": 1.0} for m in models})


@pytest.fixture
def api(clean_fleet: RunningFleet) -> Iterator[TestClient]:
    with TestClient(create_api(clean_fleet.settings, clean_fleet.redis_url, token="")) as client:
        yield client


def _final(api: TestClient, task_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = api.get(f"/v1/tasks/{task_id}").json()
        if "status" in body:
            return body
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} has no final state")


def _escalate(api: TestClient, prompt: str) -> dict[str, Any]:
    submitted = api.post("/v1/tasks", json={"prompt": prompt, "tier": "fast"})
    assert submitted.status_code == 202, submitted.text
    final = _final(api, submitted.json()["task_id"])
    assert final["status"] == "escalated"
    return final


def test_the_whole_lifecycle_through_the_api(clean_fleet: RunningFleet, api: TestClient) -> None:
    # Given two jobs submitted over HTTP that no model could answer
    fail_every_model(clean_fleet)
    first, second = _escalate(api, "Classify: 'refund please'"), _escalate(api, "Tag this: 'late delivery'")
    esc1, esc2 = first["escalation_id"], second["escalation_id"]

    # When people list and open them
    listed = api.get("/v1/escalations", params={"state": "open", "tier": "fast"}).json()
    assert {e["id"] for e in listed} == {esc1, esc2}
    record = api.get(f"/v1/escalations/{esc1}").json()
    assert record["request"]["prompt"] == "Classify: 'refund please'" and record["attempts"]

    # And a producer is blocked waiting for the first one's answer
    got: dict[str, TaskResult] = {}
    waiter = threading.Thread(
        target=lambda: got.update(r=clean_fleet.client.result(first["task_id"], 30, until_answered=True))
    )
    waiter.start()

    # When alice claims it, bob is refused with who holds it
    assert api.post(f"/v1/escalations/{esc1}/claim", json={"by": "alice"}).status_code == 200
    refused = api.post(f"/v1/escalations/{esc1}/resolve", json={"by": "bob", "answer": "no"})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "illegal_transition"
    assert "claimed by alice since" in refused.json()["error"]["message"]

    # When alice resolves it
    resolved = api.post(f"/v1/escalations/{esc1}/resolve", json={"by": "alice", "answer": "billing"})
    assert resolved.status_code == 200 and resolved.json()["state"] == "resolved"
    waiter.join(15)

    # Then the producer receives her answer, and so does GET /v1/tasks/{id}
    assert not waiter.is_alive()
    assert got["r"].answer == "billing" and got["r"].resolved_by == "human" and got["r"].resolver == "alice"
    assert _final(api, first["task_id"])["answer"] == "billing"

    # And the second is discarded; discarding it again is a conflict
    assert (
        api.post(f"/v1/escalations/{esc2}/discard", json={"by": "bob", "reason": "spam"}).status_code == 200
    )
    assert _final(api, second["task_id"])["status"] == "discarded"
    assert api.post(f"/v1/escalations/{esc2}/discard", json={"by": "bob", "reason": "x"}).status_code == 409
    stats = api.get("/v1/escalations/stats").json()
    assert stats["by_state"]["resolved"] == 1 and stats["by_state"]["discarded"] == 1
    assert stats["by_tier"]["fast"]["resolved"] == 1
    assert api.get("/v1/escalations/nope").status_code == 404


def test_a_retry_that_fails_again_is_linked_and_one_after_recovery_completes(
    clean_fleet: RunningFleet, api: TestClient
) -> None:
    # Given an escalated job, retried while the provider is still down
    fail_every_model(clean_fleet)
    first = _escalate(api, "Format this list as CSV: a, b")
    esc1 = first["escalation_id"]
    assert api.post(f"/v1/escalations/{esc1}/retry", json={"by": "alice"}).status_code == 200

    # When the retry fails too, a new escalation opens, linked to the first
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        open_now = api.get("/v1/escalations", params={"state": "open"}).json()
        if open_now:
            break
        time.sleep(0.1)
    assert len(open_now) == 1 and open_now[0]["retry_of"] == esc1
    esc2 = open_now[0]["id"]
    assert api.get(f"/v1/escalations/{esc1}").json()["followed_by"] == esc2

    # When the provider recovers and people retry the new one on the full tier
    clean_fleet.mock_config(faults_by_model={})
    assert api.post(f"/v1/escalations/{esc2}/retry", json={"by": "bob", "tier": "full"}).status_code == 200
    done = clean_fleet.client.result(first["task_id"], 30, until_answered=True)

    # Then the producer's task id gets a model's answer from the tier people chose
    assert done.status == "completed" and done.resolved_by == "model" and done.tier == "full"
    assert done.routing is not None and done.routing.classifier == "human"


def test_an_invalid_message_cannot_be_retried(clean_fleet: RunningFleet, api: TestClient) -> None:
    store = RedisEscalationStore(clean_fleet.client.redis)
    record, _ = store.create(
        NewEscalation(task_id="poison-1", reason="invalid_message", request="\x00garbage")
    )
    refused = api.post(f"/v1/escalations/{record.id}/retry", json={"by": "alice"})
    assert refused.status_code == 409
    assert "not a valid task request" in refused.json()["error"]["message"]
    assert store.get(record.id).state == "open"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 422),
        (b"", 422),
        (b"[1, 2]", 422),
        (b'{"prompt": "x", "temperature": NaN}', 422),
        (b'{"prompt": "x", "temperature": Infinity}', 422),
        (b'{"prompt": "x", "metadata": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", 422),
        (b'{"prompt": "x", "surprise": 1}', 422),
        (b'{"prompt": "' + b"a" * (1024 * 1024 + 10) + b'"}', 422),
        (b'{"prompt": "x", "system": "' + b"s" * (4 * 1024 * 1024) + b'"}', 413),
        (b"\xff\xfe{", 422),
    ],
    ids=["text", "empty", "list", "nan", "inf", "deep", "unknown", "big-prompt", "huge-body", "not-utf8"],
)
def test_bad_task_input_is_a_clear_error_never_a_500(api: TestClient, body: bytes, status: int) -> None:
    response = api.post("/v1/tasks", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["message"]


def test_bad_escalation_bodies_and_queries_are_422_in_the_fleet_shape(api: TestClient) -> None:
    for response in (
        api.post("/v1/escalations/x/claim", json={}),
        api.post("/v1/escalations/x/resolve", json={"by": "a", "answer": ""}),
        api.post("/v1/escalations/x/retry", json={"by": "a", "tier": "huge"}),
        api.post("/v1/escalations/x/claim", json={"by": "a", "extra": 1}),
        api.get("/v1/escalations", params={"state": "lost"}),
    ):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_request" and response.json()["error"]["errors"]


def test_with_a_token_every_call_but_healthz_needs_it(clean_fleet: RunningFleet) -> None:
    with TestClient(create_api(clean_fleet.settings, clean_fleet.redis_url, token=TOKEN)) as client:
        assert client.get("/v1/escalations").status_code == 401
        assert client.get("/openapi.json").status_code == 401
        wrong = client.get("/v1/escalations", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
        assert client.post("/v1/tasks", json={"prompt": "hi"}).status_code == 401
        assert client.get("/healthz").status_code == 200
        assert "<title>fleet · escalation inbox</title>" in client.get("/inbox").text
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/v1/escalations", headers=auth).json() == []
        paths = client.get("/openapi.json", headers=auth).json()["paths"]
        assert "/v1/tasks" in paths and "/v1/escalations/{esc_id}/resolve" in paths


def test_fleet_api_refuses_to_listen_off_loopback_without_a_token(fleet: RunningFleet) -> None:
    env = fleet.env()
    env.pop("FLEET_API_TOKEN", None)
    done = run(["api", "--host", "0.0.0.0", "--port", "0"], env, timeout=30)
    assert done.returncode == 3
    assert "refusing to listen on 0.0.0.0 without a token" in " ".join(done.stderr.split())
