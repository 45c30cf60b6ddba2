"""A job that kills its worker every time stops after ``limits.max_deliveries`` deliveries.

Redis only says a message was "redelivered", not how often (SQS's maxReceiveCount is the model), so
the count lives in Redis and is taken with the job's start. Past the limit the job goes to people
(``poison_message``) instead of looping. A late copy of a finished job and a copy waiting for another
worker's lock are not counted: the start checks those first. A redelivery that went back to its
queue behind a lock (the lock of the pool process that just died running it, say) is counted when
its copy runs (``JobEnvelope.uncounted_redelivery``).
"""

from __future__ import annotations

from collections.abc import Callable

from fleet.errors import Reason
from fleet.middleware.base import Finish, Job, Middleware, Requeue
from fleet.middleware.start import StartAnswer, StartPlan
from fleet.models import TaskResult

__all__ = ["PoisonGuard"]

#: Hands a job to people with a reason and a detail; returns its escalated result.
HandOver = Callable[[Job, Reason, str], TaskResult]


class PoisonGuard(Middleware):
    def __init__(self, max_deliveries: int, hand_over: HandOver) -> None:
        self.max_deliveries = max_deliveries
        self.hand_over = hand_over

    def before_start(self, job: Job, plan: StartPlan) -> None:
        if job.redelivered or job.envelope.uncounted_redelivery:
            plan.count_delivery = True
            plan.max_deliveries = self.max_deliveries

    def after_start(self, job: Job, answer: StartAnswer) -> None:
        job.notes["counted"] = "1"
        job.envelope.uncounted_redelivery = False
        if answer.state == "poison":
            detail = (
                f"delivered {answer.deliveries} times without finishing "
                "(the worker died or was killed each time)"
            )
            raise Finish(self.hand_over(job, Reason.POISON_MESSAGE, detail))

    def on_requeue(self, job: Job, requeue: Requeue) -> None:
        if "counted" not in job.notes:
            job.envelope.uncounted_redelivery = job.redelivered or job.envelope.uncounted_redelivery
