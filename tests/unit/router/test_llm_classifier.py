"""The LLM classifier: a validated JSON verdict from the mini tier, else the heuristic, saying why."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from fleet.errors import ProviderTimeout
from fleet.models import Tier, validate_request
from fleet.router import decide, llm
from fleet.router.config import default_router_settings

SETTINGS = default_router_settings().model_copy(update={"classifier": "llm", "llm_timeout_s": 1.5})
REQUEST = validate_request({"prompt": "Add docstrings to billing/invoice.py.", "kind": "docstring"})


def answering(text: str) -> Callable[[str, float], str]:
    def ask(prompt: str, timeout_s: float) -> str:
        return text

    return ask


def raising(exc: BaseException) -> Callable[[str, float], str]:
    def ask(prompt: str, timeout_s: float) -> str:
        raise exc

    return ask


def test_a_valid_verdict_decides() -> None:
    # Given a model that answers a well-formed verdict
    seen: list[tuple[str, float]] = []

    def ask(prompt: str, timeout_s: float) -> str:
        seen.append((prompt, timeout_s))
        return '{"score": 4, "tier": "full", "reason": "touches authentication"}'

    # When the router decides with the LLM classifier
    decision = decide(REQUEST, SETTINGS, ask=ask)
    # Then the verdict is used, the configured timeout was passed, and the job is in the prompt
    assert decision.tier is Tier.FULL
    assert decision.score == 4
    assert decision.classifier == "llm"
    assert decision.reasons == ["llm verdict: score 4 -> full: touches authentication"]
    assert seen[0][1] == 1.5
    assert "Add docstrings to billing/invoice.py." in seen[0][0]
    assert "kind: docstring" in seen[0][0]


def test_a_verdict_inside_a_code_fence_is_accepted() -> None:
    answer = 'Here you go:\n```json\n{"score": 1, "tier": "mini", "reason": "mechanical"}\n```'
    assert decide(REQUEST, SETTINGS, ask=answering(answer)).tier is Tier.MINI


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("mini, definitely", "no JSON object"),
        ('{"score": 2, "tier": "mini", "reason": "x",}', "invalid JSON"),
        ('{"score": 2, "tier": "mini"}', "invalid verdict (reason: Field required)"),
        ('{"score": 2, "tier": "mini", "reason": "x", "confidence": 0.9}', "invalid verdict (confidence"),
        ('{"score": "2", "tier": "mini", "reason": "x"}', "invalid verdict (score"),
        ('{"score": 2, "tier": "fast", "reason": "x"}', "invalid verdict (tier"),
        ('{"score": 7, "tier": "full", "reason": "x"}', "invalid verdict (score: Input should be less"),
        ('{"score": 0, "tier": "mini", "reason": "x"}', "invalid verdict (score: Input should be greater"),
        ('{"score": 5, "tier": "mini", "reason": "x"}', "does not match score 5"),
        ("[1, 2, 3]", "no JSON object"),
    ],
)
def test_a_bad_answer_falls_back_to_the_heuristic(answer: str, why: str) -> None:
    decision = decide(REQUEST, SETTINGS, ask=answering(answer))
    heuristic_only = decide(REQUEST, default_router_settings())
    assert decision.tier is heuristic_only.tier
    assert decision.score == heuristic_only.score
    assert decision.classifier == llm.FALLBACK
    assert decision.reasons[0].startswith("llm classifier failed, fell back to the heuristic: ")
    assert why in decision.reasons[0]
    assert decision.reasons[1:] == heuristic_only.reasons


@pytest.mark.parametrize(
    ("exc", "why"),
    [
        (TimeoutError("2.0 s"), "timed out (TimeoutError)"),
        (ProviderTimeout("mini chain timed out"), "timed out (ProviderTimeout)"),
        (ConnectionError("refused"), "ConnectionError: refused"),
        (RuntimeError(), "RuntimeError: RuntimeError"),
    ],
)
def test_a_failing_call_falls_back_to_the_heuristic(exc: BaseException, why: str) -> None:
    decision = decide(REQUEST, SETTINGS, ask=raising(exc))
    assert decision.classifier == llm.FALLBACK
    assert decision.tier is Tier.MINI
    assert why in decision.reasons[0]


def test_the_prompt_of_a_long_request_keeps_its_head_and_tail() -> None:
    request = validate_request({"prompt": "ASK-START " + "x" * 50_000 + " ASK-END"})
    prompt = llm.build_prompt(request)
    assert "ASK-START" in prompt and "ASK-END" in prompt
    assert len(prompt) < 6_000
    assert "characters omitted" in prompt


def test_parse_verdict_validates_with_pydantic() -> None:
    verdict = llm.parse_verdict(json.dumps({"score": 3, "tier": "standard", "reason": "ordinary"}))
    assert verdict == llm.Verdict(score=3, tier="standard", reason="ordinary")
