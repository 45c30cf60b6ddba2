"""The Anthropic adapter: the request it sends and how every outcome maps onto the error tree."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from fleet import errors
from fleet.providers import AnthropicProvider, ChatRequest
from fleet.providers._http import SCHEMA_MARKER
from fleet.providers.base import estimate_tokens

KEY = "sk-ant-api03-SECRETKEY-abcdef0123456789"
URL = "https://anthropic.example"
Handler = Callable[[httpx.Request], httpx.Response]
REQ = ChatRequest(model="claude-test", prompt="Summarise this text.", system="Be brief.")


@pytest.fixture
def make() -> Iterator[Callable[[Handler], AnthropicProvider]]:
    clients: list[httpx.Client] = []

    def _make(handler: Handler) -> AnthropicProvider:
        client = httpx.Client(transport=httpx.MockTransport(handler))
        clients.append(client)
        return AnthropicProvider("an", URL, SecretStr(KEY), client)

    yield _make
    for client in clients:
        client.close()


def message(blocks: Any = None, stop: str | None = "end_turn", usage: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test-2025",
        "content": [{"type": "text", "text": "hello"}] if blocks is None else blocks,
        "stop_reason": stop,
        "stop_sequence": None,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def reply(status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def error_body(etype: str, msg: str = "something") -> dict[str, Any]:
    return {"type": "error", "error": {"type": etype, "message": msg}}


def test_request_shape_headers_and_default_max_tokens(make: Callable[[Handler], AnthropicProvider]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=message(usage={"input_tokens": 4, "output_tokens": 1}))

    make(handler).complete(REQ)
    sent = seen[0]
    assert str(sent.url) == f"{URL}/v1/messages"
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    body = json.loads(sent.content)
    assert body == {
        "model": "claude-test",
        "max_tokens": 1024,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Summarise this text."}],
    }


def test_schema_goes_into_the_system_prompt_after_the_marker(
    make: Callable[[Handler], AnthropicProvider],
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=message())

    schema = {"type": "object", "required": ["x"], "properties": {"x": {"type": "integer"}}}
    make(handler).complete(
        ChatRequest(model="c", prompt="p", max_tokens=7, temperature=0.0, response_schema=schema)
    )
    body = json.loads(seen[0].content)
    assert body["max_tokens"] == 7 and body["temperature"] == 0.0
    marker, _, rest = body["system"].partition(SCHEMA_MARKER)
    assert marker == ""
    assert json.loads(rest) == schema


def test_answer_and_usage_are_mapped(make: Callable[[Handler], AnthropicProvider]) -> None:
    blocks = [{"type": "text", "text": "a"}, {"type": "tool_use", "id": "t"}, {"type": "text", "text": "b"}]
    answer = make(reply(body=message(blocks, usage={"input_tokens": 9, "output_tokens": 2}))).complete(REQ)
    assert answer.text == "ab"
    assert (answer.input_tokens, answer.output_tokens, answer.tokens_estimated) == (9, 2, False)
    assert answer.finish_reason == "stop"
    assert answer.response_model == "claude-test-2025"


def test_usage_is_estimated_when_absent(make: Callable[[Handler], AnthropicProvider]) -> None:
    answer = make(reply(body=message([{"type": "text", "text": "twelve chars"}]))).complete(REQ)
    assert answer.tokens_estimated is True
    assert answer.input_tokens == estimate_tokens("Be brief.Summarise this text.")
    assert answer.output_tokens == estimate_tokens("twelve chars")


def test_empty_content_is_an_empty_answer(make: Callable[[Handler], AnthropicProvider]) -> None:
    answer = make(reply(body=message([], usage={"input_tokens": 1, "output_tokens": 0}))).complete(REQ)
    assert (answer.text, answer.output_tokens) == ("", 0)


@pytest.mark.parametrize(
    ("stop", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls")],
)
def test_stop_reason_is_normalised(
    make: Callable[[Handler], AnthropicProvider], stop: str, finish: str
) -> None:
    assert make(reply(body=message(stop=stop))).complete(REQ).finish_reason == finish


def test_refusal_raises_content_filtered(make: Callable[[Handler], AnthropicProvider]) -> None:
    with pytest.raises(errors.ContentFiltered) as info:
        make(reply(body=message([], stop="refusal"))).complete(REQ)
    assert info.value.code == "content_filtered"


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (529, error_body("overloaded_error", "Overloaded"), errors.Overloaded),
        (500, error_body("overloaded_error"), errors.Overloaded),
        (503, b"", errors.Overloaded),
        (429, error_body("rate_limit_error"), errors.RateLimited),
        (500, error_body("api_error"), errors.ServerError),
        (502, b"bad gateway", errors.ServerError),
        (401, error_body("authentication_error", "invalid x-api-key"), errors.AuthError),
        (403, error_body("permission_error"), errors.AuthError),
        (404, error_body("not_found_error", "model: nope"), errors.BadRequest),
        (413, error_body("request_too_large"), errors.ContextLengthExceeded),
        (400, error_body("invalid_request_error", "max_tokens: Field required"), errors.BadRequest),
        (
            400,
            error_body("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
            errors.ContextLengthExceeded,
        ),
        (504, error_body("timeout_error"), errors.ProviderTimeout),
    ],
)
def test_error_maps_to_error_class(
    make: Callable[[Handler], AnthropicProvider], status: int, body: Any, cls: type[errors.ProviderError]
) -> None:
    with pytest.raises(errors.ProviderError) as info:
        make(reply(status, body)).complete(REQ)
    exc = info.value
    assert type(exc) is cls
    assert (exc.code, exc.provider, exc.model, exc.status) == (cls.code, "an", "claude-test", status)


def test_retry_after_on_rate_limit_and_overload(make: Callable[[Handler], AnthropicProvider]) -> None:
    with pytest.raises(errors.RateLimited) as info:
        make(reply(429, error_body("rate_limit_error"), {"retry-after": "12"})).complete(REQ)
    assert info.value.retry_after == 12.0
    with pytest.raises(errors.Overloaded) as over:
        make(reply(529, error_body("overloaded_error"), {"retry-after": "2"})).complete(REQ)
    assert over.value.retry_after == 2.0


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (httpx.ReadTimeout("slow"), errors.ProviderTimeout),
        (httpx.ConnectError("refused"), errors.ProviderConnectionError),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            errors.ProviderConnectionError,
        ),
        (httpx.ReadError("reset"), errors.ProviderConnectionError),
    ],
)
def test_transport_failures_are_translated(
    make: Callable[[Handler], AnthropicProvider], exc: Exception, cls: type[errors.ProviderError]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(errors.ProviderError) as info:
        make(handler).complete(REQ)
    assert type(info.value) is cls and info.value.__cause__ is exc


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b'{"content": "text, not blocks"}',
        b'{"type": "message"}',
        b'{"content": ["not a block"]}',
        b'{"content": [{"type": "text"}]}',
        b'{"type": "error", "content": [], "error": {"type": "api_error"}}',
    ],
)
def test_malformed_success_body(make: Callable[[Handler], AnthropicProvider], body: bytes) -> None:
    with pytest.raises(errors.MalformedResponse) as info:
        make(reply(200, body)).complete(REQ)
    assert info.value.status == 200


def test_api_key_never_in_messages(make: Callable[[Handler], AnthropicProvider]) -> None:
    provider = make(reply(401, error_body("authentication_error", f"invalid x-api-key {KEY} ({KEY[4:20]})")))
    with pytest.raises(errors.AuthError) as info:
        provider.complete(REQ)
    for text in (str(info.value), repr(info.value), repr(provider)):
        assert KEY not in text
        assert KEY[4:20] not in text
    assert "invalid x-api-key" in str(info.value)


def test_a_conversation_alternates_turns_with_stop_sequences_and_json_mode(
    make: Callable[[Handler], AnthropicProvider],
) -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=message())

    chat = ChatRequest(
        model="claude-test", prompt="And in French?", system="Be brief.", stop=("END",), seed=7,
        json_mode=True,
        history=(
            ("assistant", "Hi."), ("user", "Say hello."), ("user", "In English."), ("assistant", "Hello."),
        ),
    )  # fmt: skip
    make(handler).complete(chat)
    body = sent[0]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert body["messages"][2]["content"] == "Say hello.\n\nIn English."  # turns of one role joined
    assert body["messages"][-1]["content"] == "And in French?"
    assert body["stop_sequences"] == ["END"] and "seed" not in body  # the Messages API has no seed
    assert "single JSON object" in body["system"]
