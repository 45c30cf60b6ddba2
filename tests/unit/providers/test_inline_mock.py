"""The inline mock transport: the mock provider's answers inside the worker, with no HTTP."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from fleet.chain import Chain
from fleet.errors import ConfigError
from fleet.models import TaskRequest
from fleet.providers import ChatRequest, InlineMockProvider, build_provider
from fleet.settings import Settings, load_settings


def _settings(**mock: object) -> Settings:
    overrides = {"mock.enabled": True, **{f"mock.{k}": v for k, v in mock.items()}}
    return load_settings(env={}, overrides=overrides)


def _refusing_client() -> httpx.Client:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"the inline mock made an HTTP call: {request.url}")

    return httpx.Client(transport=httpx.MockTransport(refuse))


def test_inline_transport_builds_the_inline_provider_for_every_kind() -> None:
    settings = _settings(transport="inline")
    for name in settings.providers:
        assert isinstance(build_provider(name, settings, _refusing_client()), InlineMockProvider)
    http = _settings(transport="http", url="http://127.0.0.1:9")
    assert not isinstance(build_provider("openai", http, _refusing_client()), InlineMockProvider)


def test_answers_restate_the_prompt_deterministically_with_usage() -> None:
    provider = InlineMockProvider("openai", "openai")
    request = ChatRequest(model="gpt-4.1-mini", prompt="Rename the field user_id to account_id")
    first, second = provider.complete(request), provider.complete(request)
    assert first == second
    assert "Rename the field user_id to account_id" in first.text
    assert first.finish_reason == "stop" and first.input_tokens > 0 and first.output_tokens > 0
    assert first.response_model == "gpt-4.1-mini"


def test_a_response_schema_gets_an_instance_of_it() -> None:
    schema = {
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "count": {"type": "integer", "minimum": 1}},
        "required": ["order_id", "count"],
        "additionalProperties": False,
    }
    answer = InlineMockProvider("anthropic", "anthropic").complete(
        ChatRequest(model="claude-haiku-4-5", prompt="Extract it", response_schema=schema)
    )
    jsonschema.validate(json.loads(answer.text), schema)


def test_the_chain_completes_a_job_on_the_first_link_without_http() -> None:
    settings = _settings(transport="inline")
    chain = Chain(settings, client=_refusing_client())
    outcome = chain.run(settings.tier("mini").links(), TaskRequest(prompt="Uppercase: hello"))
    assert outcome.ok and outcome.link_index == 0
    assert outcome.answer is not None and "Uppercase: hello" in outcome.answer
    assert [a.outcome for a in outcome.attempts] == ["ok"]


def test_inline_refuses_failure_rate_with_a_clear_error() -> None:
    with pytest.raises(ConfigError, match='failure_rate needs transport = "http"'):
        _settings(transport="inline", failure_rate=0.2)
    with pytest.raises(ConfigError, match="transport"):
        _settings(transport="carrier-pigeon")
