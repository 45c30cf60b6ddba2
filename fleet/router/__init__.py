"""The router: sends each job to the cheapest tier that does it well.

:func:`decide` applies the precedence of DESIGN.md: a pinned tier, then the safety/reasoning,
latency and complexity hints (:mod:`fleet.router.rules`), then the content classifier: the heuristic
(:mod:`fleet.router.heuristic`) or, with ``[router] classifier = "llm"``, the mini tier's model
(:mod:`fleet.router.llm`), which falls back to the heuristic on any failure.
"""

from __future__ import annotations

from fleet.models import RoutingDecision, TaskRequest
from fleet.router import heuristic, llm, rules
from fleet.router.config import RouterSettings
from fleet.router.heuristic import tier_for_score
from fleet.router.llm import Ask
from fleet.router.rules import apply_rules

__all__ = ["Ask", "apply_rules", "decide", "heuristic", "llm", "rules", "tier_for_score"]


def decide(request: TaskRequest, settings: RouterSettings, *, ask: Ask | None = None) -> RoutingDecision:
    """Route one request: rules 1-4 first, then the configured content classifier.

    ``ask`` runs the mini tier's chain for the LLM classifier; without it, the heuristic decides.
    """
    decision = apply_rules(request, settings)
    if decision is not None:
        return decision
    if settings.classifier == "llm":
        if ask is not None:
            return llm.classify(request, settings, ask)
        decision = heuristic.classify(request, settings)
        decision.reasons.insert(0, "llm classifier configured but no model is available: heuristic used")
        return decision
    return heuristic.classify(request, settings)
