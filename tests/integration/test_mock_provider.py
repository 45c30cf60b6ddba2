"""The mock provider as a real HTTP server: both official SDKs, our adapters, faults, stats, determinism."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest
from pydantic import SecretStr

from fleet import errors
from fleet.asyncio_pool import run_in_greenlet
from fleet.providers import AnthropicProvider, ChatRequest, ChatResponse, OpenAICompatProvider, _aio
from fleet.providers.mock_server import FAULT_KINDS, MockConfig, MockServerThread

Adapter = OpenAICompatProvider | AnthropicProvider
#: Faults that never sleep long: a determinism run must not wait on the "timeout" kind.
QUICK_FAULTS = {k: (0.0 if k in ("timeout",) else 1.0) for k in FAULT_KINDS}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["title", "score", "tags", "status", "owner"],
    "additionalProperties": False,
    "properties": {
        "title": {"type": "string", "minLength": 20},
        "score": {"type": "integer", "minimum": 3, "maximum": 9, "multipleOf": 3},
        "ratio": {"type": "number", "exclusiveMinimum": 0.5},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "uniqueItems": True},
        "status": {"enum": ["open", "closed"]},
        "done": {"type": "boolean"},
        "owner": {"$ref": "#/$defs/person"},
        "note": {"type": ["null", "string"], "format": "email"},
    },
    "$defs": {"person": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}},
}


def start_mock(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m fleet.providers.mock_server`` on a free port; returns (process, base URL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.providers.mock_server", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("mock provider listening on http://127.0.0.1:"), line
    return proc, line.rsplit(" ", 1)[1].strip()


def stop_mock(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    proc, url = start_mock("--seed", "5", "--timeout-sleep-s", "3")
    yield url
    stop_mock(proc)


@pytest.fixture
def http(mock_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mock_url, timeout=10) as client:
        baseline = client.get("/_mock/config").json()
        client.post("/_mock/reset")
        yield client
        client.post("/_mock/config", json=baseline)


@pytest.fixture
def adapter(mock_url: str) -> Iterator[Callable[[str, str | None], Adapter]]:
    """adapter(wire, fault) -> our adapter for that wire, sending ``x-mock-fault: fault`` when given."""
    clients: list[httpx.Client] = []

    def make(wire: str, fault: str | None = None) -> Adapter:
        client = httpx.Client(headers={"x-mock-fault": fault} if fault else None)
        clients.append(client)
        if wire == "openai":
            return OpenAICompatProvider("mock-oa", f"{mock_url}/v1", SecretStr("k-123"), client)
        return AnthropicProvider("mock-an", mock_url, SecretStr("k-123"), client)

    yield make
    for client in clients:
        client.close()


def test_openai_sdk_gets_a_completion_with_usage(mock_url: str, http: httpx.Client) -> None:
    with openai.OpenAI(base_url=f"{mock_url}/v1", api_key="x", max_retries=0) as client:
        out = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Rename the variable foo to bar"}]
        )
        models = [m.id for m in client.models.list()]
    assert out.object == "chat.completion" and out.model == "gpt-4o-mini"
    assert out.choices[0].message.content is not None
    assert out.choices[0].message.content.startswith("Mock answer from gpt-4o-mini: Rename the variable")
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert "gpt-4o-mini" in models


def test_anthropic_sdk_gets_a_message_with_usage(mock_url: str, http: httpx.Client) -> None:
    with anthropic.Anthropic(base_url=mock_url, api_key="x", max_retries=0) as client:
        out = client.messages.create(
            model="claude-haiku", max_tokens=200, system="terse", messages=[{"role": "user", "content": "hi"}]
        )
    assert out.type == "message" and out.role == "assistant" and out.stop_reason == "end_turn"
    block = out.content[0]
    assert block.type == "text" and block.text.startswith("Mock answer from claude-haiku: hi")
    assert out.usage.input_tokens > 0 and out.usage.output_tokens > 0


def test_sdks_see_injected_faults_as_their_own_errors(mock_url: str, http: httpx.Client) -> None:
    with openai.OpenAI(base_url=f"{mock_url}/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "x"}],
                extra_headers={"x-mock-fault": "rate_limited"},
            )
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "x"}],
                extra_headers={"x-mock-fault": "connection"},
            )
    with anthropic.Anthropic(base_url=mock_url, api_key="x", max_retries=0) as aclient:
        with pytest.raises(anthropic.APIStatusError) as info:
            aclient.messages.create(
                model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                extra_headers={"x-mock-fault": "overloaded"},
            )  # fmt: skip
        assert info.value.status_code == 529


ERROR_FAULTS = [
    "rate_limited",
    "overloaded",
    "server_error",
    "timeout",
    "connection",
    "context_length_exceeded",
    "content_filtered",
    "auth",
    "bad_request",
    "malformed_response",
]


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
@pytest.mark.parametrize("fault", ERROR_FAULTS)
def test_fault_reaches_adapter_as_its_error_code(
    adapter: Callable[[str, str | None], Adapter], http: httpx.Client, wire: str, fault: str
) -> None:
    # Given a call forced to fail with `fault` (the timeout fault holds the call 3 s; we wait 0.3 s)
    request = ChatRequest(model="mock-model", prompt="Extract the dates.", timeout_s=0.3)
    # When our adapter makes it
    with pytest.raises(errors.ProviderError) as info:
        adapter(wire, fault).complete(request)
    # Then it surfaces as the error class with that code
    assert info.value.code == fault
    assert http.get("/stats").json()["by_kind"] == {fault: 1}


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_answer_shaped_faults(
    adapter: Callable[[str, str | None], Adapter], http: httpx.Client, wire: str
) -> None:
    request = ChatRequest(model="mock-model", prompt="Write a docstring for parse().")
    ok = adapter(wire, None).complete(request)
    empty = adapter(wire, "empty_answer").complete(request)
    truncated = adapter(wire, "truncated").complete(request)
    assert ok.finish_reason == "stop" and ok.text
    assert empty.text == "" and empty.output_tokens == 0
    assert truncated.finish_reason == "length" and 0 < len(truncated.text) < len(ok.text)
    assert ok.text.startswith(truncated.text)


def test_rate_limit_carries_the_configured_retry_after(
    adapter: Callable[[str, str | None], Adapter], http: httpx.Client
) -> None:
    assert http.post("/_mock/config", json={"retry_after_s": 2.5}).json()["retry_after_s"] == 2.5
    for wire in ("openai", "anthropic"):
        with pytest.raises(errors.RateLimited) as info:
            adapter(wire, "rate_limited").complete(ChatRequest(model="m", prompt="p"))
        assert info.value.retry_after == 2.5 and info.value.status == 429


def _validate(text: str) -> None:
    jsonschema.validate(json.loads(text), SCHEMA)


def test_schema_answers_validate(
    mock_url: str, adapter: Callable[[str, str | None], Adapter], http: httpx.Client
) -> None:
    # Given a schema asked through OpenAI's response_format and through the Anthropic adapter's marker
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
    with openai.OpenAI(base_url=f"{mock_url}/v1", api_key="x", max_retries=0) as client:
        out = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Extract."}], response_format=fmt
        )
    request = ChatRequest(model="c", prompt="Extract.", system="You extract fields.", response_schema=SCHEMA)
    # Then both answers are valid documents
    assert out.choices[0].message.content is not None
    _validate(out.choices[0].message.content)
    _validate(adapter("anthropic", None).complete(request).text)
    _validate(adapter("openai", None).complete(request).text)
    # And the schema_mismatch fault answers something that is not
    for wire in ("openai", "anthropic"):
        bad = adapter(wire, "schema_mismatch").complete(request)
        with pytest.raises((jsonschema.ValidationError, json.JSONDecodeError)):
            _validate(bad.text)


def test_stats_count_calls_by_kind_and_model(
    adapter: Callable[[str, str | None], Adapter], http: httpx.Client
) -> None:
    adapter("openai", None).complete(ChatRequest(model="a", prompt="one"))
    adapter("anthropic", None).complete(ChatRequest(model="b", prompt="two"))
    with pytest.raises(errors.ServerError):
        adapter("openai", "server_error").complete(ChatRequest(model="a", prompt="three"))
    stats = http.get("/stats").json()
    assert stats["total"] == 3
    assert stats["by_kind"] == {"ok": 2, "server_error": 1}
    assert stats["by_model"] == {"a": 2, "b": 1}
    assert stats["by_model_kind"] == {"a": {"ok": 1, "server_error": 1}, "b": {"ok": 1}}
    http.post("/_mock/reset")
    assert http.get("/stats").json()["total"] == 0


def test_config_down_models_allow_list_and_per_model_faults(
    adapter: Callable[[str, str | None], Adapter], http: httpx.Client
) -> None:
    patch = {
        "down_models": ["dead"],
        "faults_by_model": {"flaky": {"server_error": 1.0}},
        "models": ["dead", "flaky", "ok"],
    }
    effective = http.post("/_mock/config", json=patch).json()
    assert effective["down_models"] == ["dead"] and effective["models"] == ["dead", "flaky", "ok"]
    for wire in ("openai", "anthropic"):
        with pytest.raises(errors.Overloaded) as down:
            adapter(wire, None).complete(ChatRequest(model="dead", prompt="p"))
        assert down.value.status == 503
        with pytest.raises(errors.ServerError):
            adapter(wire, None).complete(ChatRequest(model="flaky", prompt="p"))
        assert adapter(wire, None).complete(ChatRequest(model="ok", prompt="p")).text
        with pytest.raises(errors.BadRequest) as unknown:
            adapter(wire, None).complete(ChatRequest(model="unlisted", prompt="p"))
        assert unknown.value.status == 404


def test_config_rejects_bad_patches(http: httpx.Client) -> None:
    assert http.post("/_mock/config", json={"failure_rate": 2}).status_code == 422
    assert http.post("/_mock/config", json={"no_such_option": 1}).status_code == 422
    assert http.post("/_mock/config", json={"faults_by_model": {"m": {"not_a_kind": 0.1}}}).status_code == 422
    assert http.get("/_mock/config").json()["failure_rate"] == 0.0


def test_latency_is_applied(adapter: Callable[[str, str | None], Adapter], http: httpx.Client) -> None:
    http.post("/_mock/config", json={"latency_ms": 150})
    started = time.perf_counter()
    adapter("openai", None).complete(ChatRequest(model="m", prompt="p"))
    assert time.perf_counter() - started >= 0.15


def test_healthz_and_unknown_fault_header(mock_url: str, http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    resp = http.post("/v1/chat/completions", json=body, headers={"x-mock-fault": "gremlins"})
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"
    assert http.post("/v1/messages", json=body).json()["error"]["message"] == "max_tokens: Field required"


def _fates(url: str, prompts: list[str]) -> list[str]:
    """The outcome code of each call, in order, through our OpenAI adapter."""
    out: list[str] = []
    with httpx.Client() as client:
        provider = OpenAICompatProvider("mock", f"{url}/v1", None, client)
        for prompt in prompts:
            try:
                answer: ChatResponse = provider.complete(ChatRequest(model="m", prompt=prompt, timeout_s=5))
                out.append("ok" if answer.text and answer.finish_reason == "stop" else answer.finish_reason)
            except errors.ProviderError as exc:
                out.append(exc.code)
    return out


def test_same_seed_same_fates_and_a_retry_can_draw_another() -> None:
    # Given two servers with the same seed and failure rate, and a workload with repeated prompts
    options = json.dumps({"fault_weights": QUICK_FAULTS})
    args = ("--seed", "11", "--failure-rate", "0.5", "--config-json", options)
    (p1, url1), (p2, url2) = start_mock(*args), start_mock(*args)
    prompts = [f"job {i % 6}" for i in range(36)]
    try:
        # When both see the same sequence
        first, second = _fates(url1, prompts), _fates(url2, prompts)
        # And one of them is reset to another seed
        with httpx.Client(base_url=url2) as client:
            client.post("/_mock/config", json={"seed": 12})
            client.post("/_mock/reset")
        other = _fates(url2, prompts)
    finally:
        stop_mock(p1)
        stop_mock(p2)
    # Then the fates match call for call, and another seed gives other fates
    assert first == second
    assert other != first
    assert "ok" in first and len(set(first) - {"ok"}) >= 3
    # And the same call repeated (a retry) does not always meet the same fate
    assert len({first[i] for i in range(0, 36, 6)}) > 1


def test_mock_server_thread_serves_and_stops() -> None:
    with MockServerThread(MockConfig(latency_ms=0)) as mock:
        assert httpx.get(f"{mock.url}/healthz").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{mock.url}/healthz", timeout=1)


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_on_the_asyncio_pool_the_same_answers_and_error_codes(
    adapter: Callable[[str, str | None], Adapter], http: httpx.Client, wire: str
) -> None:
    """A job on the asyncio pool calls through aiohttp on the loop (fleet/providers/_aio.py): the same
    answers, and every fault as the same error code as over httpx."""

    def on_the_loop(fault: str | None, request: ChatRequest) -> ChatResponse | str:
        async def call() -> ChatResponse:
            try:
                return await run_in_greenlet(adapter(wire, fault).complete, request)
            finally:
                await _aio.close()

        try:
            return asyncio.run(call())
        except errors.ProviderError as exc:
            return exc.code

    request = ChatRequest(model="mock-model", prompt="Write a docstring for parse().")
    over_httpx = adapter(wire, None).complete(request)
    answer = on_the_loop(None, request)
    assert isinstance(answer, ChatResponse)
    assert (answer.text, answer.input_tokens, answer.output_tokens) == (
        over_httpx.text, over_httpx.input_tokens, over_httpx.output_tokens,
    )  # fmt: skip
    quick = ChatRequest(model="mock-model", prompt="Extract the dates.", timeout_s=0.3)
    assert {fault: on_the_loop(fault, quick) for fault in ERROR_FAULTS} == {f: f for f in ERROR_FAULTS}
