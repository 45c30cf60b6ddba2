"""The routing precedence of DESIGN.md: pinned > safety/reasoning > latency > complexity > content."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.models import Tier, validate_request
from fleet.router import decide
from fleet.router.config import RouterSettings, default_router_settings
from fleet.router.rules import apply_rules

SETTINGS = default_router_settings()
HARD_PROMPT = "Design the architecture of our payments platform and weigh the trade-offs."
EASY_PROMPT = "Translate 'good morning' into French."


def route(prompt: str = HARD_PROMPT, settings: RouterSettings = SETTINGS, **fields: Any) -> Any:
    return decide(validate_request({"prompt": prompt, **fields}), settings)


def test_pinned_tier_beats_every_hint() -> None:
    # Given a pinned tier and every hint pointing elsewhere
    hints = {"safety_critical": True, "latency_budget_ms": 100, "complexity": "high"}
    # When routed
    decision = route(tier="mini", hints=hints)
    # Then the producer's pin wins and the reasons say so
    assert decision.tier is Tier.MINI
    assert decision.classifier == "pinned"
    assert decision.score is None
    assert decision.reasons == ["pinned to tier mini by the producer"]


@pytest.mark.parametrize("hint", ["safety_critical", "requires_reasoning"])
def test_safety_or_reasoning_goes_full_over_latency_and_complexity(hint: str) -> None:
    decision = route(EASY_PROMPT, hints={hint: True, "latency_budget_ms": 300, "complexity": "low"})
    assert decision.tier is Tier.FULL
    assert decision.classifier == "rules"
    assert f"hints.{hint} is set" in decision.reasons
    assert any("outranked" in r for r in decision.reasons)


def test_both_safety_hints_are_named() -> None:
    decision = route(hints={"safety_critical": True, "requires_reasoning": True})
    assert decision.reasons == ["hints.safety_critical is set", "hints.requires_reasoning is set"]


def test_latency_at_the_threshold_goes_fast_over_complexity_and_content() -> None:
    decision = route(HARD_PROMPT, hints={"latency_budget_ms": 2000, "complexity": "high"})
    assert decision.tier is Tier.FAST
    assert decision.reasons == ["latency budget 2000 ms <= fast threshold 2000 ms"]


def test_latency_above_the_threshold_does_not_decide() -> None:
    decision = route(EASY_PROMPT, hints={"latency_budget_ms": 2001})
    assert decision.tier is not Tier.FAST
    assert decision.classifier == "heuristic"


def test_fast_threshold_comes_from_settings() -> None:
    tight = SETTINGS.model_copy(update={"fast_threshold_ms": 500})
    assert route(settings=tight, hints={"latency_budget_ms": 800}).tier is not Tier.FAST
    assert route(settings=tight, hints={"latency_budget_ms": 500}).tier is Tier.FAST


@pytest.mark.parametrize(
    ("complexity", "tier"), [("low", Tier.MINI), ("medium", Tier.STANDARD), ("high", Tier.FULL)]
)
def test_complexity_hint_beats_content(complexity: str, tier: Tier) -> None:
    prompt = EASY_PROMPT if complexity == "high" else HARD_PROMPT
    decision = route(prompt, hints={"complexity": complexity})
    assert decision.tier is tier
    assert decision.reasons == [f"hints.complexity is {complexity} -> {tier.value}"]


def test_without_a_deciding_hint_the_content_decides() -> None:
    request = validate_request({"prompt": HARD_PROMPT, "hints": {"files": ["a.py"]}})
    assert apply_rules(request, SETTINGS) is None
    decision = decide(request, SETTINGS)
    assert decision.classifier == "heuristic"
    assert decision.tier is Tier.FULL
    assert decision.score is not None and decision.score >= 4


def test_llm_classifier_configured_without_a_model_uses_the_heuristic() -> None:
    settings = SETTINGS.model_copy(update={"classifier": "llm"})
    decision = route(EASY_PROMPT, settings=settings)
    assert decision.classifier == "heuristic"
    assert "no model is available" in decision.reasons[0]


def test_llm_classifier_is_not_asked_when_a_rule_decides() -> None:
    def ask(prompt: str, timeout_s: float) -> str:
        raise AssertionError("the model must not be asked")

    settings = SETTINGS.model_copy(update={"classifier": "llm"})
    request = validate_request({"prompt": EASY_PROMPT, "hints": {"complexity": "low"}})
    assert decide(request, settings, ask=ask).tier is Tier.MINI
