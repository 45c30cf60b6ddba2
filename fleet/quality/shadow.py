"""Shadow evaluation: a sample of answered jobs run again on the full tier, in the background, and
both answers judged side by side, so a team sees what routing down costs before routing more down.

``router.shadow_rate`` of the completed jobs below full are sent again to the full tier's queue as a
shadow run (task id ``shadow-<id>``) carrying the first answer. The producer's result does not
change. On the full tier the shadow run answers as any job does; then one judge call scores both
answers, and the comparison counts in :mod:`fleet.quality.feedback` (``fleet quality`` shows it).
A shadow run's cost goes on its own cost line (status ``shadow``), and it never escalates to people.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fleet.errors import BrokerError
from fleet.middleware.base import Job, Middleware
from fleet.models import JobEnvelope, QualityCheck, RoutingDecision, ShadowOf, TaskResult, Tier
from fleet.quality.feedback import tally_shadow
from fleet.quality.gate import sampled, with_calls
from fleet.quality.judge import Judge

__all__ = ["SHADOW_PREFIX", "ShadowRun"]

log = logging.getLogger(__name__)

#: The task id of a job's shadow run is this, then the job's id.
SHADOW_PREFIX = "shadow-"

#: Sends a shadow run: its request (as the job's message carried it) and its envelope.
Send = Callable[[object, JobEnvelope], None]


class ShadowRun(Middleware):
    def __init__(self, rate: float, judge: Judge, send: Send, threshold: int = 3) -> None:
        self.rate = rate
        self.judge = judge
        self.send = send
        self.threshold = threshold

    def after_call(self, job: Job, result: TaskResult) -> TaskResult:
        shadow = job.envelope.shadow
        if shadow is None or result.status != "completed" or result.answer is None:
            return result
        pair, judged = self.judge.compare(job.request, shadow.answer, result.answer)
        check = QualityCheck(
            tier=Tier.FULL, why=f"shadow of {shadow.task_id} ({shadow.tier})", judge=judged.link
        )
        check.cost_usd = round(judged.cost_usd, 8)
        if pair is None:
            check.action = "judge_unavailable"
        else:
            first, full = pair
            check.score, check.problems, check.passed = (
                full.score,
                full.problems,
                full.score >= self.threshold,
            )
            check.action = f"compared: {shadow.tier} scored {first.score}, full {full.score}"
            tally_shadow(job.tail, str(shadow.tier), shadow.kind, (first.score, full.score), self.threshold)
        return with_calls(result, judged.attempts, [check])

    def before_finish(self, job: Job, result: TaskResult) -> None:
        if (
            self.rate <= 0
            or job.envelope.shadow is not None
            or result.status != "completed"
            or result.answer is None
            or job.routing.tier == Tier.FULL
            or not sampled(job.id, "shadow", self.rate)
        ):
            return
        envelope = JobEnvelope(
            id=f"{SHADOW_PREFIX}{job.id}",
            submitted_at=job.envelope.submitted_at,
            routing=RoutingDecision(
                tier=Tier.FULL, reasons=[f"shadow run of {job.id} ({job.routing.tier})"], classifier="shadow"
            ),
            shadow=ShadowOf(
                task_id=job.id, tier=job.routing.tier, kind=job.request.kind, answer=result.answer
            ),
        )
        try:
            self.send(job.payload, envelope)
        except BrokerError as exc:  # a shadow run is a sample: losing one must not fail the job
            log.warning("task %s: could not send its shadow run: %s", job.id, exc)
