"""The router: sends each job to the cheapest tier that does it well.

:func:`decide` applies the precedence of DESIGN.md: a pinned tier, then the safety/reasoning,
latency and complexity hints (:mod:`fleet.router.rules`), then the content classifier: the heuristic
(:mod:`fleet.router.heuristic`) or, with ``[router] classifier = "llm"``, the mini tier's model
(:mod:`fleet.router.llm`), which falls back to the heuristic on any failure.

Outcome feedback then corrects the content classifier: a ``feedback`` callable (the quality gate's
pass rates, :mod:`fleet.quality.feedback`) may move a kind that keeps failing on its tier one tier
up, and says why in ``reasons``. It never overrides a pinned tier or a producer's hint.
"""

from __future__ import annotations

from collections.abc import Callable

from fleet.models import RoutingDecision, TaskRequest, Tier
from fleet.router import heuristic, llm, rules
from fleet.router.config import RouterSettings
from fleet.router.heuristic import tier_for_score
from fleet.router.llm import Ask
from fleet.router.rules import apply_rules

__all__ = [
    "Ask",
    "Feedback",
    "apply_rules",
    "decide",
    "heuristic",
    "llm",
    "rules",
    "tier_for_score",
    "with_feedback",
]

#: (tier, kind) -> why the kind should run one tier up now, or None. The quality gate's pass rates.
Feedback = Callable[[Tier, str | None], str | None]
_UP = {Tier.MINI: Tier.STANDARD, Tier.STANDARD: Tier.FULL}


def decide(
    request: TaskRequest,
    settings: RouterSettings,
    *,
    ask: Ask | None = None,
    feedback: Feedback | None = None,
) -> RoutingDecision:
    """Route one request: rules 1-4 first, then the configured content classifier, then feedback.

    ``ask`` runs the mini tier's chain for the LLM classifier; without it, the heuristic decides.
    ``feedback`` may move the classifier's decision one tier up (see the module docstring).
    """
    decision = apply_rules(request, settings)
    if decision is not None:
        return decision
    if settings.classifier == "llm":
        if ask is not None:
            decision = llm.classify(request, settings, ask)
        else:
            decision = heuristic.classify(request, settings)
            decision.reasons.insert(0, "llm classifier configured but no model is available: heuristic used")
    else:
        decision = heuristic.classify(request, settings)
    return with_feedback(decision, request, feedback)


def with_feedback(
    decision: RoutingDecision, request: TaskRequest, feedback: Feedback | None
) -> RoutingDecision:
    """The classifier's decision, one tier up when the feedback says its kind keeps failing there."""
    up = _UP.get(decision.tier)
    if feedback is None or up is None:
        return decision
    why = feedback(decision.tier, request.kind)
    if why is None:
        return decision
    return decision.model_copy(update={"tier": up, "reasons": [*decision.reasons, why]})
