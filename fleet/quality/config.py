"""``[quality]``: the quality gate's settings, per tier and per kind (a leaf: settings composes it).

Defaults live here and in ``config/fleet.toml``; every key is documented where it is declared.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.providers.config import check_links

__all__ = [
    "ConfidenceSettings",
    "FeedbackSettings",
    "GateAction",
    "GatePolicy",
    "PolicyOverride",
    "QualitySettings",
]

#: What the gate does with an answer that fails its check.
GateAction = Literal["upgrade", "polish", "escalate"]

#: Hedging and refusal phrases that mark a low-confidence answer (case-insensitive, whole phrases).
DEFAULT_HEDGES = [
    "i'm not sure", "i am not sure", "not entirely sure", "i'm not certain", "i am not certain",
    "i think, though", "i may be wrong", "i might be wrong", "hard to say", "it's unclear", "it is unclear",
    "i cannot", "i can't", "i'm unable", "i am unable", "as an ai", "i don't know", "i do not know",
    "without more information", "may not be accurate",
]  # fmt: skip


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GatePolicy(_Section):
    """How one tier's answers are checked."""

    #: Share of answers the judge checks (0: none, unless a confidence signal asks; 1: all).
    sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: A judge's score (1-5) below this fails the answer.
    threshold: int = Field(default=3, ge=1, le=5)
    #: What a failed answer gets: "upgrade" (the next tier up runs it again), "polish" (a stronger
    #: model rewrites it, given the problems) or "escalate" (to people).
    action: GateAction = "upgrade"
    #: A low-confidence answer: "judge" it even when the sample skipped it, "upgrade" it without a
    #: judge, or "ignore" the signals.
    on_low_confidence: Literal["judge", "upgrade", "ignore"] = "judge"
    #: The tier whose chain rewrites a failed answer ("polish"); None: ``quality.polish``, else the
    #: next tier up.
    polish_tier: Literal["standard", "full"] | None = None


class PolicyOverride(_Section):
    """A kind's overrides of its tier's policy (``[quality.kinds."legal.*"]``); unset keys keep the tier's."""

    sample_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    threshold: int | None = Field(default=None, ge=1, le=5)
    action: GateAction | None = None
    on_low_confidence: Literal["judge", "upgrade", "ignore"] | None = None
    polish_tier: Literal["standard", "full"] | None = None


class ConfidenceSettings(_Section):
    """Cheap signals read from an answer before any judge is asked."""

    #: Ask OpenAI-compatible providers for token log-probabilities (no extra call; a larger answer).
    logprobs: bool = True
    #: A mean token log-probability below this is low confidence.
    min_mean_logprob: float = -1.0
    #: Phrases that hedge or refuse (matched case-insensitively).
    hedges: list[str] = Field(default_factory=lambda: list(DEFAULT_HEDGES))
    #: An answer with fewer words than this share of the words the request asks for is too short.
    short_ratio: float = Field(default=0.35, gt=0.0, le=1.0)


class FeedbackSettings(_Section):
    """Outcome feedback into routing: a kind that keeps failing on a tier is routed one tier up."""

    enabled: bool = True
    #: Pass rate below which a kind moves up from a tier...
    floor: float = Field(default=0.7, ge=0.0, le=1.0)
    #: ... once at least this many of its answers on that tier were judged in the window.
    min_judged: int = Field(default=20, ge=1)
    #: The window of verdicts the router reads (older ones age out: a kind moved up comes back down
    #: and is judged again once its failures are older than this).
    window_s: float = Field(default=3600.0, gt=0)
    #: How often a router process reads the pass rates again (one round trip each time).
    refresh_s: float = Field(default=15.0, gt=0)


def _default_tiers() -> dict[str, GatePolicy]:
    return {
        "mini": GatePolicy(sample_rate=0.1, threshold=3, action="upgrade"),
        "standard": GatePolicy(sample_rate=0.05, threshold=3, action="upgrade"),
        "full": GatePolicy(sample_rate=0.0, threshold=3, action="escalate"),
        "fast": GatePolicy(sample_rate=0.0, threshold=3, action="polish", on_low_confidence="ignore"),
    }


class QualitySettings(_Section):
    """The quality gate: a judge checks a sample of answers (and every low-confidence one) and acts
    on those that fail. See docs/quality.md."""

    enabled: bool = True
    #: The judge's chain of ``provider:model`` links (empty: the standard tier's chain).
    judge: list[str] = Field(default_factory=list)
    #: The chain that rewrites a failed answer for "polish" (empty: the next tier up's chain).
    polish: list[str] = Field(default_factory=list)
    #: Seconds a judge (or a rewrite) may take, through its whole chain.
    judge_timeout_s: float = Field(default=60.0, gt=0)
    #: Characters of the request a judge is shown (its head and tail, when longer).
    judge_max_chars: int = Field(default=20_000, ge=1000)
    #: An answer the gate sent up a tier is judged again on the next one.
    rejudge_upgraded: bool = True
    #: Per tier: mini, standard, full, fast.
    tiers: dict[str, GatePolicy] = Field(default_factory=_default_tiers)
    #: Per kind, by glob ("legal.*"): overrides of its tier's policy; the first match wins.
    kinds: dict[str, PolicyOverride] = Field(default_factory=dict)
    confidence: ConfidenceSettings = Field(default_factory=ConfidenceSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)

    @field_validator("judge", "polish")
    @classmethod
    def _links(cls, value: list[str]) -> list[str]:
        return check_links(value)

    @field_validator("tiers")
    @classmethod
    def _every_tier(cls, value: dict[str, GatePolicy]) -> dict[str, GatePolicy]:
        unknown = sorted(set(value) - {"mini", "standard", "full", "fast"})
        if unknown:
            raise ValueError(f"unknown tiers {unknown}; expected mini, standard, full, fast")
        return {**_default_tiers(), **value}

    def policy(self, tier: str, kind: str | None) -> GatePolicy:
        """The policy for an answer of ``kind`` on ``tier``: the tier's, with the first matching kind's
        overrides."""
        base = self.tiers.get(tier, GatePolicy())
        for pattern, override in self.kinds.items():
            if kind and fnmatch.fnmatchcase(kind, pattern):
                return base.model_copy(update=override.model_dump(exclude_none=True))
        return base
