"""The quality gate: a middleware that checks an answer after the chain gave it.

For each completed answer it reads the cheap confidence signals (:mod:`fleet.quality.signals`),
then asks the judge when the tier's sample says so, when a signal fired, or when the answer comes
from a tier the gate already sent it up from. An answer the sample skips and no signal flags costs
nothing: no call, no round trip. A judged answer that fails gets its tier's action:

- ``upgrade``: the job goes to the next tier's queue (mini -> standard -> full), under that tier's
  limits and chain, carrying its attempts and this check;
- ``polish``: a stronger model rewrites the answer, given the judge's problems;
- ``escalate``: people answer it (reason ``quality_check_failed``).

Every check goes on the result (``quality``), its calls into the result's attempts and cost, and
its verdict into the pass rates routing reads (:mod:`fleet.quality.feedback`), with the job's last
round trip.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

from fleet.errors import Reason
from fleet.middleware.base import Job, Middleware, Requeue
from fleet.models import Attempt, QualityCheck, RoutingDecision, TaskResult, Tier
from fleet.quality.config import GatePolicy, QualitySettings
from fleet.quality.feedback import NEXT_UP, tally_verdict
from fleet.quality.judge import Judge
from fleet.quality.signals import Confidence, assess

__all__ = ["QualityGate", "sampled", "with_calls"]


class HandOver(Protocol):
    """Hands a job to people with a reason, a detail and the attempts to keep; its escalated result."""

    def __call__(
        self, job: Job, reason: Reason, detail: str, *, attempts: list[Attempt] | None = None
    ) -> TaskResult: ...


#: The chain of ``(provider, model)`` links that rewrites for a tier (``True``: that tier's own chain,
#: never ``quality.polish``).
LinksOf = Callable[[str, bool], list[tuple[str, str]]]


def sampled(task_id: str, salt: str, rate: float) -> bool:
    """Whether a job falls in a sample of ``rate`` (deterministic: the same job, the same answer)."""
    if rate <= 0:
        return False
    digest = hashlib.blake2b(f"{salt}\0{task_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < rate


def with_calls(result: TaskResult, attempts: list[Attempt], checks: list[QualityCheck]) -> TaskResult:
    """``result`` with more calls charged to it (a judge's, a rewrite's) and its quality checks."""
    every = [*result.attempts, *attempts]
    return result.model_copy(
        update={
            "attempts": every,
            "input_tokens": sum(a.input_tokens for a in every),
            "output_tokens": sum(a.output_tokens for a in every),
            "cost_usd": round(sum(a.cost_usd for a in every), 8),
            "quality": checks,
        }
    )


class QualityGate(Middleware):
    def __init__(
        self, settings: QualitySettings, judge: Judge, hand_over: HandOver, links_of: LinksOf
    ) -> None:
        self.settings = settings
        self.judge = judge
        self.hand_over = hand_over
        self.links_of = links_of

    def after_call(self, job: Job, result: TaskResult) -> TaskResult:
        earlier = list(job.envelope.quality)
        if not self.settings.enabled or job.envelope.shadow is not None:
            return result
        if result.status != "completed" or result.answer is None:
            return result.model_copy(update={"quality": earlier}) if earlier else result
        tier = str(job.routing.tier)
        policy = self.settings.policy(tier, job.request.kind)
        confidence = assess(
            job.request.ask, result.answer, job.outcome.mean_logprob if job.outcome else None,
            self.settings.confidence, structured=job.request.response_schema is not None,
        )  # fmt: skip
        why = self._why(job, tier, policy, confidence)
        if why is None:
            return result.model_copy(update={"quality": earlier}) if earlier else result
        check = QualityCheck(tier=Tier(tier), why=why, signals=confidence.signals)
        if confidence.low and policy.on_low_confidence == "upgrade" and tier in NEXT_UP:
            check.passed, check.action = False, "upgrade"
            self._upgrade(job, result, check, [], f"{tier} answer of low confidence")
        return self._judged(job, result, tier, policy, check)

    def _why(self, job: Job, tier: str, policy: GatePolicy, confidence: Confidence) -> str | None:
        """Why this answer is checked, or None (the sample skipped it and nothing flags it)."""
        if self.settings.rejudge_upgraded and any(c.action == "upgrade" for c in job.envelope.quality):
            return "the gate upgraded it from a lower tier"
        if confidence.low and policy.on_low_confidence != "ignore":
            return "low confidence"
        if sampled(job.id, tier, policy.sample_rate):
            return f"sampled ({policy.sample_rate:.0%} of {tier} answers)"
        return None

    def _judged(
        self, job: Job, result: TaskResult, tier: str, policy: GatePolicy, check: QualityCheck
    ) -> TaskResult:
        answer = result.answer or ""
        verdict, judged = self.judge.verdict(job.request, answer)
        check.judge, check.cost_usd = judged.link, round(judged.cost_usd, 8)
        checks = [*job.envelope.quality, check]
        if verdict is None:  # no judge answered: the answer ships, and the check says why
            check.action = "judge_unavailable"
            return with_calls(result, judged.attempts, checks)
        check.score, check.problems = verdict.score, verdict.problems
        check.passed = verdict.score >= policy.threshold
        tally_verdict(job.tail, tier, job.request.kind, check.passed)
        if check.passed:
            return with_calls(result, judged.attempts, checks)
        failed = f"{tier} answer scored {verdict.score} < {policy.threshold}"
        if policy.action == "upgrade" and tier in NEXT_UP:
            check.action = "upgrade"
            self._upgrade(job, result, check, judged.attempts, failed)
        if policy.action in ("polish", "upgrade"):  # full has no tier above it: its best model rewrites
            polished = self._polish(job, result, check, judged.attempts, policy)
            if polished is not None:
                return polished
        check.action = "escalate"
        detail = f"quality gate: {failed}: " + "; ".join(verdict.problems)
        escalated = self.hand_over(
            job, Reason.QUALITY_CHECK_FAILED, detail, attempts=[*result.attempts, *judged.attempts]
        )
        return escalated.model_copy(update={"quality": checks})

    def _polish(
        self,
        job: Job,
        result: TaskResult,
        check: QualityCheck,
        judge_attempts: list[Attempt],
        policy: GatePolicy,
    ) -> TaskResult | None:
        tier = str(job.routing.tier)
        links = self.links_of(policy.polish_tier or NEXT_UP.get(tier, "full"), policy.polish_tier is not None)
        rewrite = self.judge.polish(links, job.request, result.answer or "", check.problems)
        check.cost_usd = round(check.cost_usd + rewrite.cost_usd, 8)
        if rewrite.answer is None or rewrite.link is None:
            return None
        check.action = "polish"
        provider, _, model = rewrite.link.partition(":")
        polished = with_calls(result, [*judge_attempts, *rewrite.attempts], [*job.envelope.quality, check])
        return polished.model_copy(update={"answer": rewrite.answer, "provider": provider, "model": model})

    def _upgrade(
        self, job: Job, result: TaskResult, check: QualityCheck, judge_attempts: list[Attempt], failed: str
    ) -> None:
        """Send the job to the next tier up, with everything it did so far.

        Raises:
            Requeue: always (to the next tier's queue).
        """
        tier = str(job.routing.tier)
        up = Tier(NEXT_UP[tier])
        job.envelope.attempts = [*result.attempts, *judge_attempts]
        job.envelope.quality = [*job.envelope.quality, check]
        reasons = [*job.routing.reasons, f"quality gate: {failed}: upgraded to {up}"]
        job.envelope.routing = RoutingDecision(
            tier=up, score=job.routing.score, reasons=reasons, classifier=job.routing.classifier
        )
        raise Requeue(0.0, f"quality gate: {failed}", queue=str(up))
