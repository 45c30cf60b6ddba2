"""Handing a job to people: what every path that gives a job up calls (a chain with no link left, a
poison message, a message that does not validate, later a failed quality check).

The escalation is persisted first (``EscalationStore.create``, idempotent per task id), then announced
on the ``escalations`` queue (the notify task posts the webhook), and the job's final result says
``escalated`` with its escalation's id. A crash between the two can only duplicate the announcement's
attempt, never lose the record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fleet import telemetry
from fleet.errors import Reason
from fleet.escalations import EscalationStore, NewEscalation
from fleet.middleware.base import Job
from fleet.models import Attempt, TaskResult

__all__ = ["Handoff"]

log = logging.getLogger(__name__)

#: Announces a new escalation by its id (sends the notify task).
Announce = Callable[[str], None]


class Handoff:
    """Hands jobs to people through one escalation store."""

    def __init__(self, store: EscalationStore, announce: Announce) -> None:
        self.store = store
        self.announce = announce

    def job(
        self, job: Job, reason: Reason, detail: str, *, attempts: list[Attempt] | None = None
    ) -> TaskResult:
        """Hand a tier job to people, with every attempt it made so far (or ``attempts``): the
        middlewares' and the runner's way to escalate (a :data:`fleet.runner.HandOver`). A shadow run
        is never handed to people: it ends discarded.

        Raises:
            BrokerError: the broker is down.
        """
        if attempts is None:
            attempts = [*job.envelope.attempts, *(job.outcome.attempts if job.outcome else [])]
        if job.envelope.shadow is not None:
            return TaskResult.from_attempts(
                job.id, "discarded", attempts, tier=job.routing.tier, kind=job.request.kind,
                reason=f"shadow run: {reason}", submitted_at=job.envelope.submitted_at,
                finished_at=time.time(),
            )  # fmt: skip
        step = job.envelope.step
        if step is not None:  # people see where in its pipeline the job failed
            item = "" if step.index is None else f" item {step.index + 1}"
            detail = f"pipeline {step.pipeline} ({step.pipeline_id}) step {step.step}{item}: {detail}"
        new = NewEscalation(
            task_id=job.id,
            reason=reason,
            detail=detail,
            tier=job.routing.tier,
            queue=job.consumed_from,
            request=job.payload,
            routing=job.routing,
            attempts=attempts,
            submitted_at=job.envelope.submitted_at,
            retry_of=job.envelope.retry_of,
        )
        return self.escalate(new, kind=job.request.kind)

    def escalate(self, new: NewEscalation, *, kind: str | None = None) -> TaskResult:
        """Persist the escalation (once per task id), announce a new one, and return the job's final
        result.

        Raises:
            BrokerError: the broker is down (nothing was recorded; the message is not acked).
        """
        if new.trace_id is None:
            new = new.model_copy(update={"trace_id": telemetry.current_traceparent()})
        record, created = self.store.create(new)
        if created:
            telemetry.record_escalation(new.reason, new.tier)
        if created or record.notified_at is None:
            # A run that died between the record and its announcement announces it on its next
            # delivery (the notify task does nothing for a record already notified).
            self.announce(record.id)
        log.warning("task %s escalated: %s %s", new.task_id, new.reason, new.detail[:200])
        return TaskResult.from_attempts(
            new.task_id,
            "escalated",
            new.attempts,
            tier=new.tier,
            kind=kind,
            routing=new.routing,
            escalation_id=record.id,
            reason=str(record.reason),
            submitted_at=new.submitted_at,
            finished_at=time.time(),
        )
