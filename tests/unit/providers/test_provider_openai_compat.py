"""The OpenAI-compatible adapter: the request it sends and how every outcome maps onto the error tree."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from fleet import errors
from fleet.providers import (
    AnthropicProvider,
    ChatRequest,
    OpenAICompatProvider,
    build_provider,
    make_http_client,
)
from fleet.providers.base import estimate_tokens
from fleet.providers.config import MockSettings, ProviderSettings
from fleet.settings import Settings

KEY = "sk-test-SECRETKEY-0123456789abcdef"
URL = "https://llm.example/v1"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def make() -> Iterator[Callable[[Handler], OpenAICompatProvider]]:
    clients: list[httpx.Client] = []

    def _make(handler: Handler) -> OpenAICompatProvider:
        client = httpx.Client(transport=httpx.MockTransport(handler))
        clients.append(client)
        return OpenAICompatProvider("oa", URL, SecretStr(KEY), client, read_timeout_s=30.0)

    yield _make
    for client in clients:
        client.close()


def completion(
    content: str | None = "hello", finish: str | None = "stop", usage: Any = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-test-2024",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def reply(status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes | str):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def fail(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


REQ = ChatRequest(model="gpt-test", prompt="Summarise this text.", system="Be brief.")


def test_request_carries_key_messages_schema_and_timeouts(
    make: Callable[[Handler], OpenAICompatProvider],
) -> None:
    # Given a provider that records what it was sent
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion(usage={"prompt_tokens": 5, "completion_tokens": 2}))

    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    request = ChatRequest(
        model="gpt-test",
        prompt="p",
        system="s",
        max_tokens=50,
        temperature=0.2,
        response_schema=schema,
        timeout_s=7,
    )
    # When a call is made
    make(handler).complete(request)
    # Then the wire request is the OpenAI chat completions shape
    sent = seen[0]
    assert str(sent.url) == f"{URL}/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    body = json.loads(sent.content)
    assert body["messages"] == [{"role": "system", "content": "s"}, {"role": "user", "content": "p"}]
    assert body["max_tokens"] == 50 and body["temperature"] == 0.2
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema},
    }
    assert sent.extensions["timeout"]["read"] == 7
    assert sent.extensions["timeout"]["connect"] == 5.0


def test_default_read_timeout_and_no_optional_fields(make: Callable[[Handler], OpenAICompatProvider]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion())

    make(handler).complete(ChatRequest(model="m", prompt="p"))
    body = json.loads(seen[0].content)
    assert set(body) == {"model", "messages"}
    assert seen[0].extensions["timeout"]["read"] == 30.0


def test_answer_and_usage_are_mapped(make: Callable[[Handler], OpenAICompatProvider]) -> None:
    usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    answer = make(reply(body=completion("the answer", usage=usage))).complete(REQ)
    assert answer.text == "the answer"
    assert answer.finish_reason == "stop"
    assert (answer.input_tokens, answer.output_tokens, answer.tokens_estimated) == (11, 3, False)
    assert answer.response_model == "gpt-test-2024"
    assert answer.extra == {"id": "chatcmpl-1"}


@pytest.mark.parametrize(
    "usage", [None, {}, {"prompt_tokens": 3}, {"prompt_tokens": "3", "completion_tokens": 1}]
)
def test_usage_is_estimated_when_absent(make: Callable[[Handler], OpenAICompatProvider], usage: Any) -> None:
    answer = make(reply(body=completion("four score and seven", usage=usage))).complete(REQ)
    assert answer.tokens_estimated is True
    assert answer.input_tokens == estimate_tokens("Be brief.Summarise this text.")
    assert answer.output_tokens == estimate_tokens("four score and seven")


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("eos", "stop"),
        ("tool_calls", "tool_calls"),
        (None, "unknown"),
    ],
)
def test_finish_reason_is_normalised(
    make: Callable[[Handler], OpenAICompatProvider], raw: str | None, normalised: str
) -> None:
    assert make(reply(body=completion(finish=raw))).complete(REQ).finish_reason == normalised


def test_null_content_is_an_empty_answer_for_the_chain_to_judge(
    make: Callable[[Handler], OpenAICompatProvider],
) -> None:
    assert make(reply(body=completion(content=None))).complete(REQ).text == ""


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (429, {"error": {"message": "slow down", "code": "rate_limit_exceeded"}}, errors.RateLimited),
        (500, {"error": {"message": "oops", "type": "server_error"}}, errors.ServerError),
        (502, "<html>bad gateway</html>", errors.ServerError),
        (503, {"error": {"message": "overloaded"}}, errors.Overloaded),
        (529, None, errors.Overloaded),
        (401, {"error": {"message": "bad key", "code": "invalid_api_key"}}, errors.AuthError),
        (403, {"error": {"message": "forbidden"}}, errors.AuthError),
        (404, {"error": {"message": "no such model", "code": "model_not_found"}}, errors.BadRequest),
        (422, {"error": "unprocessable"}, errors.BadRequest),
        (400, {"error": {"message": "temperature too high", "code": "invalid_value"}}, errors.BadRequest),
        (
            400,
            {"error": {"message": "too long", "code": "context_length_exceeded"}},
            errors.ContextLengthExceeded,
        ),
        (
            400,
            {"error": {"message": "This model's maximum context length is 8192 tokens."}},
            errors.ContextLengthExceeded,
        ),
        (400, {"error": {"message": "blocked", "code": "content_policy_violation"}}, errors.ContentFiltered),
        (
            400,
            {"error": {"message": "Your request was rejected by our content policy."}},
            errors.ContentFiltered,
        ),
        (408, None, errors.ProviderTimeout),
        (413, None, errors.ContextLengthExceeded),
        (302, None, errors.MalformedResponse),
    ],
)
def test_error_status_maps_to_error_class(
    make: Callable[[Handler], OpenAICompatProvider], status: int, body: Any, cls: type[errors.ProviderError]
) -> None:
    with pytest.raises(errors.ProviderError) as info:
        make(reply(status, body if body is not None else b"")).complete(REQ)
    exc = info.value
    assert type(exc) is cls
    assert exc.code == cls.code
    assert (exc.provider, exc.model, exc.status) == ("oa", "gpt-test", status)


def test_retry_after_seconds_and_milliseconds(make: Callable[[Handler], OpenAICompatProvider]) -> None:
    with pytest.raises(errors.RateLimited) as info:
        make(reply(429, {"error": {"message": "x"}}, {"retry-after": "3"})).complete(REQ)
    assert info.value.retry_after == 3.0
    with pytest.raises(errors.RateLimited) as info:
        make(reply(429, {}, {"retry-after": "3", "retry-after-ms": "250"})).complete(REQ)
    assert info.value.retry_after == 0.25
    with pytest.raises(errors.RateLimited) as info:
        make(reply(429, {}, {"retry-after": "soon"})).complete(REQ)
    assert info.value.retry_after is None


def test_retry_after_http_date(make: Callable[[Handler], OpenAICompatProvider]) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    with pytest.raises(errors.RateLimited) as info:
        make(reply(429, {}, {"retry-after": when})).complete(REQ)
    assert info.value.retry_after is not None
    assert 27 <= info.value.retry_after <= 30


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (httpx.ReadTimeout("read timed out"), errors.ProviderTimeout),
        (httpx.ConnectTimeout("connect timed out"), errors.ProviderTimeout),
        (httpx.PoolTimeout("pool"), errors.ProviderTimeout),
        (httpx.ConnectError("refused"), errors.ProviderConnectionError),
        (httpx.RemoteProtocolError("Server disconnected"), errors.ProviderConnectionError),
        (httpx.ReadError("reset by peer"), errors.ProviderConnectionError),
        (httpx.WriteError("broken pipe"), errors.ProviderConnectionError),
        (httpx.DecodingError("bad gzip"), errors.MalformedResponse),
    ],
)
def test_transport_failures_are_translated_with_cause(
    make: Callable[[Handler], OpenAICompatProvider], exc: Exception, cls: type[errors.ProviderError]
) -> None:
    with pytest.raises(errors.ProviderError) as info:
        make(fail(exc)).complete(REQ)
    assert type(info.value) is cls
    assert info.value.__cause__ is exc
    assert info.value.status is None


@pytest.mark.parametrize(
    "body",
    [
        b"<html>not json</html>",
        b'{"choices": [',
        b"[]",
        b"{}",
        b'{"choices": []}',
        b'{"choices": [{"finish_reason": "stop"}]}',
        b'{"choices": [{"message": {"content": 5}, "finish_reason": "stop"}]}',
    ],
)
def test_malformed_success_body(make: Callable[[Handler], OpenAICompatProvider], body: bytes) -> None:
    with pytest.raises(errors.MalformedResponse) as info:
        make(reply(200, body)).complete(REQ)
    assert info.value.code == "malformed_response"
    assert info.value.status == 200


def test_content_filter_finish_and_refusal_raise(make: Callable[[Handler], OpenAICompatProvider]) -> None:
    with pytest.raises(errors.ContentFiltered):
        make(reply(body=completion(content=None, finish="content_filter"))).complete(REQ)
    refusal = completion(content=None)
    refusal["choices"][0]["message"]["refusal"] = "I can't help with that."
    with pytest.raises(errors.ContentFiltered):
        make(reply(body=refusal)).complete(REQ)


@pytest.mark.parametrize("status", [400, 401, 429, 500])
def test_api_key_never_in_messages(make: Callable[[Handler], OpenAICompatProvider], status: int) -> None:
    # Given a provider that echoes the key whole and in part in its error body
    body = {"error": {"message": f"Incorrect API key provided: {KEY}; also {KEY[:12]}... and {KEY[-14:]}"}}
    with pytest.raises(errors.ProviderError) as info:
        make(reply(status, body)).complete(REQ)
    exc = info.value
    # Then the key is in none of the texts people or logs will see
    for text in (str(exc), repr(exc), json.dumps(exc.to_dict())):
        assert KEY not in text
        assert KEY[:12] not in text
        assert KEY[-14:] not in text
    assert "Incorrect API key provided" in str(exc)


def test_api_key_not_in_transport_errors_or_repr(make: Callable[[Handler], OpenAICompatProvider]) -> None:
    provider = make(fail(httpx.ConnectError(f"cannot reach with {KEY}")))
    with pytest.raises(errors.ProviderConnectionError) as info:
        provider.complete(REQ)
    assert KEY not in str(info.value)
    assert KEY not in repr(provider)


def _settings(mock_url: str = "") -> Settings:
    providers = {
        "oa": ProviderSettings(
            kind="openai-compatible", base_url="https://api.openai.com/v1", api_key=SecretStr(KEY)
        ),
        "an": ProviderSettings(kind="anthropic", base_url="https://api.anthropic.com", read_timeout_s=12),
    }
    mock = MockSettings(enabled=bool(mock_url), url=mock_url)
    return Settings.model_construct(providers=providers, mock=mock)


def test_build_provider_picks_adapter_and_base_url() -> None:
    settings = _settings()
    with make_http_client(settings) as client:
        oa = build_provider("oa", settings, client)
        an = build_provider("an", settings, client)
        assert isinstance(oa, OpenAICompatProvider) and oa.base_url == "https://api.openai.com/v1"
        assert isinstance(an, AnthropicProvider) and an.base_url == "https://api.anthropic.com"
        assert an.read_timeout_s == 12
        with pytest.raises(KeyError):
            build_provider("nope", settings, client)


def test_build_provider_points_at_the_mock_when_enabled() -> None:
    settings = _settings("http://127.0.0.1:9999")
    with make_http_client(settings) as client:
        assert build_provider("oa", settings, client).base_url == "http://127.0.0.1:9999/v1"  # type: ignore[attr-defined]
        assert build_provider("an", settings, client).base_url == "http://127.0.0.1:9999"  # type: ignore[attr-defined]


def test_a_conversation_is_sent_as_messages_with_stop_seed_and_json_mode(
    make: Callable[[Handler], OpenAICompatProvider],
) -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=completion())

    chat = ChatRequest(
        model="gpt-test", prompt="And in French?", system="Be brief.", stop=("END",), seed=7, json_mode=True,
        history=(("user", "Say hello."), ("assistant", "Hello.")),
    )  # fmt: skip
    make(handler).complete(chat)
    body = sent[0]
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "And in French?"},
    ]
    assert (
        body["stop"] == ["END"] and body["seed"] == 7 and body["response_format"] == {"type": "json_object"}
    )
