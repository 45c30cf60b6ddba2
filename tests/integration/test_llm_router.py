"""The LLM classifier against the mock provider over real HTTP, through the mini tier's chain."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from fleet.chain import Chain
from fleet.errors import ProviderError
from fleet.models import TaskRequest
from fleet.providers.mock_server import MockConfig, MockServerThread
from fleet.router import decide
from fleet.router.llm import CLASSIFIER, FALLBACK, VERDICT_SCHEMA, Ask
from fleet.settings import Settings, load_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def mock() -> Iterator[MockServerThread]:
    with MockServerThread(MockConfig(seed=1)) as server:
        yield server


def _settings(url: str) -> Settings:
    settings = load_settings(
        profile="demo", env={"FLEET_MOCK__URL": url, "FLEET_ROUTER__CLASSIFIER": '"llm"'}
    )
    assert settings.router.classifier == "llm"
    return settings


def _mini_tier_ask(chain: Chain, settings: Settings) -> Ask:
    """What the route task asks with: the mini tier's chain, for a schema-valid verdict."""

    def ask(prompt: str, timeout_s: float) -> str:
        request = TaskRequest(prompt=prompt, max_tokens=200, temperature=0.0, response_schema=VERDICT_SCHEMA)
        outcome = chain.run(settings.tier("mini").links(), request, timeout_s=timeout_s)
        if outcome.answer is None:
            raise ProviderError(f"the mini tier gave no verdict ({outcome.reason})")
        return outcome.answer

    return ask


def test_the_verdict_comes_from_the_mini_tiers_model(mock: MockServerThread) -> None:
    # Given the LLM classifier asking the mini tier's chain of the mock provider
    settings = _settings(mock.url)
    chain = Chain(settings)
    ask = _mini_tier_ask(chain, settings)

    # When a job without hints is routed
    decision = decide(
        TaskRequest(prompt="Rename variable tmp to total in utils.py"), settings.router, ask=ask
    )

    # Then the model's schema-valid verdict decided, and the mock saw the call
    assert decision.classifier == CLASSIFIER, decision.reasons
    assert decision.score is not None and 1 <= decision.score <= 5
    assert httpx.get(f"{mock.url}/stats").json()["total"] >= 1
    chain.close()


def test_a_failing_model_falls_back_to_the_heuristic_and_says_so(mock: MockServerThread) -> None:
    settings = _settings(mock.url)
    down = [m for _, m in settings.tier("mini").links()]
    httpx.post(f"{mock.url}/_mock/config", json={"down_models": down}).raise_for_status()
    chain = Chain(settings)
    ask = _mini_tier_ask(chain, settings)
    decision = decide(TaskRequest(prompt="Design a multi-region failover plan"), settings.router, ask=ask)
    assert decision.classifier == FALLBACK
    assert "llm classifier failed" in decision.reasons[0]
    chain.close()


def test_precedence_rules_never_ask_the_model(mock: MockServerThread) -> None:
    settings = _settings(mock.url)
    chain = Chain(settings)
    ask = _mini_tier_ask(chain, settings)
    decision = decide(
        TaskRequest(prompt="Anything", hints={"safety_critical": True}), settings.router, ask=ask
    )
    assert str(decision.tier) == "full"
    assert httpx.get(f"{mock.url}/stats").json()["total"] == 0
    chain.close()
