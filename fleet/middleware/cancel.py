"""Cancelled jobs: one a worker reaches after ``fleet cancel`` ends ``cancelled`` without a call (its
start read the mark on the job's record, in the same round trip); one already running stops after its
current call (the chain asks before each later call, see ``JobRunner.call``) and is charged only the
calls it made."""

from __future__ import annotations

import time

from fleet.middleware.base import Finish, Job, Middleware
from fleet.middleware.start import StartAnswer
from fleet.models import TaskResult

__all__ = ["Cancellation", "cancelled_result"]


def cancelled_result(job: Job) -> TaskResult:
    """The job's final result once cancelled: every call it made (the chain's, if it ran) charged."""
    attempts = [*job.envelope.attempts, *(job.outcome.attempts if job.outcome else [])]
    return TaskResult.from_attempts(
        job.id, "cancelled", attempts, tier=job.routing.tier, kind=job.request.kind, routing=job.routing,
        reason="cancelled", submitted_at=job.envelope.submitted_at, finished_at=time.time(),
    )  # fmt: skip


class Cancellation(Middleware):
    """Ends a cancelled job at its start (put it before the job lock: nothing was taken)."""

    def after_start(self, job: Job, answer: StartAnswer) -> None:
        if answer.state == "cancelled":
            raise Finish(cancelled_result(job))
