"""Prompt caching, end to end over real HTTP: the adapters send the providers' cache hints, the
mock's SIMULATED cache answers with cached tokens in each wire's usage, the adapters read them, and
a call's price and the cost report count them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr

from fleet.costs import cache_saving, job_fields, report
from fleet.models import Attempt, TaskResult
from fleet.providers import AnthropicProvider, ChatRequest, OpenAICompatProvider
from fleet.providers.mock_server import MockConfig, MockServerThread
from fleet.settings import load_settings

#: A shared system prompt of about 1,500 tokens: long enough to cache.
POLICY = "Refunds: within 30 days, to the original payment method, no questions asked. " * 80


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServerThread]:
    with MockServerThread(MockConfig()) as server:
        yield server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as c:
        yield c


def _ask(prompt: str) -> ChatRequest:
    return ChatRequest(model="m", prompt=prompt, system=POLICY, cache_key="support.refund")


def test_openai_caches_a_long_prefix_by_itself_and_the_key_is_sent(
    mock: MockServerThread, client: httpx.Client
) -> None:
    sent: list[dict[str, object]] = []
    client.event_hooks["request"] = [lambda r: sent.append(json.loads(r.content))]
    provider = OpenAICompatProvider("o", f"{mock.url}/v1", SecretStr("k"), client, prompt_cache=True)
    first = provider.complete(_ask("Can I get a refund for order 1?"))
    second = provider.complete(_ask("Can I get a refund for order 2?"))
    assert sent[0]["prompt_cache_key"] == "support.refund"
    assert first.cached_input_tokens == 0
    # the prefix (the system prompt) was seen: read from the cache, in 128-token steps
    assert second.cached_input_tokens > 1000 and second.cached_input_tokens % 128 == 0
    assert second.cached_input_tokens < second.input_tokens


def test_anthropic_caches_only_a_marked_system_prompt_writing_then_reading(
    mock: MockServerThread, client: httpx.Client
) -> None:
    plain = AnthropicProvider("a", mock.url, SecretStr("k"), client)
    assert plain.complete(_ask("Refund for order 3?")).cache_write_tokens == 0  # not marked: no cache
    provider = AnthropicProvider("a", mock.url, SecretStr("k"), client, prompt_cache=True)
    first = provider.complete(_ask("Refund for order 4?"))
    second = provider.complete(_ask("Refund for order 5?"))
    assert first.cache_write_tokens > 1000 and first.cached_input_tokens == 0
    assert second.cached_input_tokens == first.cache_write_tokens and second.cache_write_tokens == 0
    # input_tokens counts every input token (Anthropic's own leaves the cached ones out)
    assert second.input_tokens > second.cached_input_tokens


def test_a_short_system_prompt_is_not_marked(client: httpx.Client) -> None:
    sent: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(500)

    with httpx.Client(transport=httpx.MockTransport(handler)) as c:
        provider = AnthropicProvider("a", "https://a.example", SecretStr("k"), c, prompt_cache=True)
        with pytest.raises(Exception):  # noqa: B017 - the 500 is not the point
            provider.complete(ChatRequest(model="m", prompt="hi", system="Be brief."))
    assert sent[0]["system"] == "Be brief."


def test_cached_tokens_are_priced_and_reported_with_their_saving() -> None:
    settings = load_settings(env={})
    sonnet = settings.model("anthropic", "claude-sonnet-4-5")
    # 2,000 input tokens of which 1,500 from the cache (at 0.1x), 100 out
    assert sonnet.cost(2000, 100, cached=1500) == pytest.approx((500 * 3 + 1500 * 0.3 + 100 * 15) / 1e6)
    # a write costs 1.25x: a saving below zero for the call that wrote
    assert sonnet.cache_saving(0, 1500) == pytest.approx(-1500 * 0.75 / 1e6)
    attempt = Attempt(
        link="anthropic:claude-sonnet-4-5", provider="anthropic", model="claude-sonnet-4-5", outcome="ok",
        input_tokens=2000, output_tokens=100, cached_input_tokens=1500, cost_usd=sonnet.cost(2000, 100, 1500),
    )  # fmt: skip
    assert cache_saving(settings, [attempt]) == pytest.approx(1500 * 2.7 / 1e6)
    result = TaskResult.from_attempts("t1", "completed", [attempt], tier="standard")
    fields = job_fields(settings, result, [attempt])
    from fleet.costs import _parse  # the stream's own reader

    record = _parse("1000-0", fields)
    assert record is not None
    out = report([record])
    assert out["cached_input_tokens"] == 1500 and out["cache_hit_ratio"] == 0.75
    assert out["cache_saving_usd"] == pytest.approx(1500 * 2.7 / 1e6, abs=1e-6)
