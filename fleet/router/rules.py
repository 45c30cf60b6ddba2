"""The routing precedence rules 1-4 from DESIGN.md, pure functions of the request and settings.

1. ``tier`` pinned by the producer -> that tier.
2. ``hints.safety_critical`` or ``hints.requires_reasoning`` -> full.
3. ``hints.latency_budget_ms`` at or under ``router.fast_threshold_ms`` -> fast.
4. ``hints.complexity``: low -> mini, medium -> standard, high -> full.

Rule 5 (the content classifier) lives in :mod:`fleet.router.heuristic` and :mod:`fleet.router.llm`.
"""

from __future__ import annotations

from collections.abc import Callable

from fleet.models import Complexity, RoutingDecision, TaskRequest, Tier
from fleet.router.config import RouterSettings

__all__ = ["CLASSIFIER", "PINNED", "RULES", "apply_rules", "complexity", "latency", "pinned", "safety"]

#: ``classifier`` of a decision made by rules 2-4.
CLASSIFIER = "rules"
#: ``classifier`` of a decision made by rule 1.
PINNED = "pinned"

_COMPLEXITY_TIER = {Complexity.LOW: Tier.MINI, Complexity.MEDIUM: Tier.STANDARD, Complexity.HIGH: Tier.FULL}

Rule = Callable[[TaskRequest, RouterSettings], RoutingDecision | None]


def pinned(request: TaskRequest, settings: RouterSettings) -> RoutingDecision | None:
    """Rule 1: the producer pinned a tier."""
    if request.tier is None:
        return None
    reason = f"pinned to tier {request.tier.value} by the producer"
    return RoutingDecision(tier=request.tier, score=None, reasons=[reason], classifier=PINNED)


def safety(request: TaskRequest, settings: RouterSettings) -> RoutingDecision | None:
    """Rule 2: safety-critical or reasoning-heavy work goes to the full tier."""
    set_hints = [
        name
        for name, on in (
            ("safety_critical", request.hints.safety_critical),
            ("requires_reasoning", request.hints.requires_reasoning),
        )
        if on
    ]
    if not set_hints:
        return None
    reasons = [f"hints.{name} is set" for name in set_hints]
    return RoutingDecision(tier=Tier.FULL, score=None, reasons=reasons, classifier=CLASSIFIER)


def latency(request: TaskRequest, settings: RouterSettings) -> RoutingDecision | None:
    """Rule 3: an interactive latency budget goes to the fast tier."""
    budget = request.hints.latency_budget_ms
    if budget is None or budget > settings.fast_threshold_ms:
        return None
    reason = f"latency budget {budget} ms <= fast threshold {settings.fast_threshold_ms} ms"
    return RoutingDecision(tier=Tier.FAST, score=None, reasons=[reason], classifier=CLASSIFIER)


def complexity(request: TaskRequest, settings: RouterSettings) -> RoutingDecision | None:
    """Rule 4: the producer's complexity hint."""
    hint = request.hints.complexity
    if hint is None:
        return None
    tier = _COMPLEXITY_TIER[hint]
    reason = f"hints.complexity is {hint.value} -> {tier.value}"
    return RoutingDecision(tier=tier, score=None, reasons=[reason], classifier=CLASSIFIER)


#: Rules 1-4 in precedence order; the first that decides wins.
RULES: tuple[Rule, ...] = (pinned, safety, latency, complexity)


def apply_rules(request: TaskRequest, settings: RouterSettings) -> RoutingDecision | None:
    """The decision of the first rule that applies, or None when the content must decide."""
    for rule in RULES:
        decision = rule(request, settings)
        if decision is not None:
            if rule is not latency and request.hints.latency_budget_ms is not None:
                # Say why a tight budget did not win, so an operator is not surprised.
                budget = request.hints.latency_budget_ms
                if budget <= settings.fast_threshold_ms and rule is not pinned:
                    decision.reasons.append(f"latency budget {budget} ms outranked by the rule above")
            return decision
    return None
