"""Scenario 8: hypothesis-generated TaskRequest-shaped JSON at `Client.submit` and at
`POST /v1/tasks`: a clean InvalidRequest / 4xx, or an accepted job; never another exception, a
500 or a hang. Runs on a database no worker reads; what was accepted is flushed after."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from fleet.api import create_api
from fleet.errors import InvalidRequest
from fleet.producer import Client
from fleet.settings import Settings, load_settings

from ..conftest import flush_fleet_keys, other_db_url

pytestmark = pytest.mark.integration

_EDGE_TEXT = st.sampled_from(
    ["", " ", "\x00", "\ud800", "\udfff", "\u202e", "\ufeff", "e\u0301", "🧨" * 50, "\U0010ffff", "null",
     "x" * 70_000, "<script>", "'; DROP TABLE jobs; --", "\n\r\t", "%s%n"]
)  # fmt: skip
TEXT = st.one_of(st.text(max_size=200), _EDGE_TEXT)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0, -1, 1e308]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
ANY_JSON = st.recursive(
    SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=20,
)  # fmt: skip
HINTS = st.fixed_dictionaries(
    {},
    optional={
        "complexity": st.one_of(st.sampled_from(["low", "medium", "high"]), ANY_JSON),
        "requires_reasoning": st.one_of(st.booleans(), ANY_JSON),
        "safety_critical": st.one_of(st.booleans(), ANY_JSON),
        "latency_budget_ms": st.one_of(NUMBERS, ANY_JSON),
        "files": st.one_of(st.lists(TEXT, max_size=5), ANY_JSON),
    },
)
REQUESTS = st.fixed_dictionaries(
    {"prompt": st.one_of(TEXT, ANY_JSON)},
    optional={
        "system": st.one_of(TEXT, ANY_JSON),
        "kind": TEXT,
        "tier": st.one_of(st.sampled_from(["mini", "standard", "full", "fast", "huge"]), ANY_JSON),
        "hints": st.one_of(HINTS, ANY_JSON),
        "max_tokens": st.one_of(NUMBERS, ANY_JSON),
        "temperature": st.one_of(NUMBERS, ANY_JSON),
        "response_schema": st.one_of(
            st.just({"type": "object", "properties": {"a": {"type": "string"}}}),
            st.just({"type": "nonsense"}),
            st.just({"$ref": "#/$defs/loop", "$defs": {"loop": {"$ref": "#/$defs/loop"}}}),
            ANY_JSON,
        ),
        "idempotency_key": st.one_of(TEXT, ANY_JSON),
        "metadata": st.one_of(st.dictionaries(TEXT, TEXT, max_size=3), ANY_JSON),
        "colour": ANY_JSON,
    },
)  # fmt: skip


def _nested(depth: int) -> Any:
    return {"prompt": "hi", "metadata": json.loads("[" * depth + "]" * depth)}


FUZZ = settings(max_examples=120, deadline=2000, suppress_health_check=[HealthCheck.too_slow,
                HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])  # fmt: skip


@pytest.fixture(scope="module")
def fuzz_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    state = tmp_path_factory.mktemp("fuzz")
    return load_settings(profile="demo", env={**base, "FLEET_STATE_DIR": str(Path(state))})


@pytest.fixture(scope="module")
def db_url(broker_url: str) -> Iterator[str]:
    url = other_db_url(broker_url)
    yield url
    flush_fleet_keys(url)


@pytest.fixture(scope="module")
def client(fuzz_settings: Settings, db_url: str) -> Iterator[Client]:
    c = Client(fuzz_settings, redis_url=db_url)
    yield c
    c.close()


def _submit_outcome(client: Client, request: Any) -> str:
    try:
        task_id = client.submit(request)
    except InvalidRequest as exc:
        assert exc.code == "invalid_request" and exc.errors
        return "invalid"
    assert isinstance(task_id, str) and task_id
    return "accepted"


@FUZZ
@given(request=REQUESTS)
def test_submit_accepts_or_refuses_cleanly(client: Client, request: dict[str, Any]) -> None:
    _submit_outcome(client, request)


@FUZZ
@given(request=REQUESTS)
def test_submit_of_the_json_text_accepts_or_refuses_cleanly(client: Client, request: dict[str, Any]) -> None:
    _submit_outcome(client, json.dumps(request))  # NaN/Infinity go out as JSON5-ish tokens


@pytest.mark.parametrize("depth", [50, 5_000, 200_000])
def test_deep_nesting_is_refused_cleanly(client: Client, depth: int) -> None:
    body = '{"prompt": "hi", "metadata": ' + "[" * depth + "]" * depth + "}"
    assert _submit_outcome(client, body) == "invalid"
    if depth < 900:  # Python's own recursion limit keeps the dict form shallower
        assert _submit_outcome(client, _nested(depth)) == "invalid"


@pytest.fixture(scope="module")
def http(fuzz_settings: Settings, db_url: str) -> Iterator[TestClient]:
    with TestClient(
        create_api(fuzz_settings, db_url, token="fuzz-token"), raise_server_exceptions=False
    ) as c:
        c.headers["Authorization"] = "Bearer fuzz-token"
        yield c


@FUZZ
@given(request=REQUESTS)
def test_api_answers_202_or_a_4xx(http: TestClient, request: dict[str, Any]) -> None:
    response = http.post(
        "/v1/tasks", content=json.dumps(request), headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (202, 413, 422), response.text
    body = response.json()
    if response.status_code == 202:
        assert isinstance(body["task_id"], str)
    else:
        assert body["error"]["code"] == "invalid_request"


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_api_with_arbitrary_bytes_answers_202_or_a_4xx(http: TestClient, raw: bytes) -> None:
    response = http.post("/v1/tasks", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code in (202, 413, 422), response.text


def test_api_deep_nesting_is_a_422(http: TestClient) -> None:
    body = '{"prompt": "hi", "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert http.post("/v1/tasks", content=body).status_code == 422
