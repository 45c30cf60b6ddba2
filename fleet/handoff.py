"""Handing a job to people: what every path that gives a job up calls (a chain with no link left, a
poison message, a message that does not validate, later a failed quality check).

The escalation is persisted first (``EscalationStore.create``, idempotent per task id), then announced
on the ``escalations`` queue (the notify task posts the webhook), and the job's final result says
``escalated`` with its escalation's id. A crash between the two can only duplicate the announcement's
attempt, never lose the record.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from fleet import telemetry
from fleet.escalations import EscalationStore, NewEscalation
from fleet.models import Attempt, RoutingDecision, TaskResult, Tier

__all__ = ["Handoff"]

log = logging.getLogger(__name__)

#: Announces a new escalation by its id (sends the notify task).
Announce = Callable[[str], None]


class Handoff:
    """Hands jobs to people through one escalation store."""

    def __init__(self, store: EscalationStore, announce: Announce) -> None:
        self.store = store
        self.announce = announce

    def escalate(self, new: NewEscalation, *, kind: str | None = None) -> TaskResult:
        """Persist the escalation (once per task id), announce a new one, and return the job's final
        result.

        Raises:
            BrokerError: the broker is down (nothing was recorded; the message is not acked).
        """
        if new.trace_id is None:
            new = dataclasses.replace(new, trace_id=telemetry.current_traceparent())
        record, created = self.store.create(new)
        if created:
            telemetry.record_escalation(new.reason, new.tier)
            self.announce(record["id"])
        log.warning("task %s escalated: %s %s", new.task_id, new.reason, new.detail[:200])
        attempts = [Attempt.model_validate(a) for a in new.attempts or []]
        return TaskResult.from_attempts(
            new.task_id,
            "escalated",
            attempts,
            tier=Tier.of(new.tier),
            kind=kind,
            routing=RoutingDecision.model_validate(new.routing) if new.routing else None,
            escalation_id=record["id"],
            reason=record["reason"],
            submitted_at=new.submitted_at,
            finished_at=time.time(),
        )
