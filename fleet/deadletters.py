"""RabbitMQ's dead letters into the escalation inbox.

On RabbitMQ every fleet queue is a quorum queue with ``x-delivery-limit = limits.max_deliveries``
and the ``fleet.dead`` dead-letter exchange (:mod:`fleet.brokers`): a message delivered more often
(its worker died each time) is dead-lettered into the ``fleet.dead`` queue instead of looping. The
escalations worker consumes that queue here: each dead letter becomes an escalation with reason
``poison_message`` (once per job: the store is idempotent per task id), the job's final result says
so, and the dead letter is acked only after both are written.

Messages the fleet's consumer already refused (``invalid_message``, ``unknown_task``: Celery rejects
them, and RabbitMQ dead-letters a rejected message too) were escalated when they were refused: they
are acked here without a second record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from typing import Any

from celery import bootsteps
from kombu import Consumer

from fleet import brokers, keys
from fleet.errors import BrokerError, Reason
from fleet.escalations import NewEscalation
from fleet.models import JobEnvelope, RoutingDecision, Tier

__all__ = ["DeadLetters", "dead_letter_escalation"]

log = logging.getLogger(__name__)


def _death(headers: dict[str, Any]) -> tuple[str, str | None]:
    """(why, the queue it died on) from RabbitMQ's ``x-death`` header (the latest death first)."""
    deaths = headers.get("x-death") or []
    first = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    queue = first.get("queue") or headers.get("x-first-death-queue")
    reason = first.get("reason") or headers.get("x-first-death-reason") or "unknown"
    return str(reason), (str(queue) if queue else None)


def dead_letter_escalation(headers: dict[str, Any], body: Any, max_deliveries: int) -> NewEscalation | None:
    """The escalation of a dead-lettered task message, or None for one the fleet's consumer
    already handed to people when it refused it."""
    reason, queue = _death(headers)
    if reason == "rejected":
        return None
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    # A message without an id gets one from its body: a dead letter delivered twice is one record.
    task_id = str(headers.get("id") or f"dead-{hashlib.sha1(repr(body).encode()).hexdigest()[:16]}")
    request: Any = body
    envelope: JobEnvelope | None = None
    if isinstance(body, str):
        with contextlib.suppress(ValueError):
            body = json.loads(body)
    if isinstance(body, list | tuple) and body and isinstance(body[0], list | tuple) and body[0]:
        args = body[0]
        request = args[0]
        if len(args) > 1 and isinstance(args[1], dict):
            try:
                envelope = JobEnvelope.model_validate(args[1])
            except ValueError:
                envelope = None
    routing: RoutingDecision | None = envelope.routing if envelope else None
    why = {
        "delivery_limit": f"delivered more than {max_deliveries} times without finishing (the worker "
        "died or was killed each time); RabbitMQ dead-lettered it",
        "expired": "its message expired on the queue; RabbitMQ dead-lettered it",
    }.get(reason, f"RabbitMQ dead-lettered it ({reason})")
    return NewEscalation(
        task_id=task_id,
        reason=Reason.POISON_MESSAGE,
        detail=why,
        tier=routing.tier if routing else Tier.of(queue),
        queue=queue,
        request=request if isinstance(request, dict | str) else repr(request)[:2000],
        routing=routing,
        attempts=envelope.attempts if envelope else [],
        submitted_at=envelope.submitted_at if envelope else None,
        retry_of=envelope.retry_of if envelope else None,
    )


class DeadLetters(bootsteps.ConsumerStep):
    """Consumes ``fleet.dead`` in the escalations worker, on RabbitMQ only."""

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        consumed = set(c.app.amqp.queues.consume_from or ())
        self.enabled = brokers.is_amqp(str(c.app.conf.broker_url or "")) and "escalations" in consumed

    def get_consumers(self, channel: Any) -> list[Consumer]:
        if not self.enabled:
            return []
        queues = [brokers.dead_letter_queue()]
        consumer = Consumer(channel, queues=queues, callbacks=[self.on_message], accept=["json"])
        consumer.qos(prefetch_count=10)
        return [consumer]

    def on_message(self, body: Any, message: Any) -> None:
        from fleet.runtime import get_runtime  # deferred: the runtime is built in the worker

        runtime = get_runtime()
        headers = dict(message.headers or {})
        try:
            new = dead_letter_escalation(headers, body, runtime.settings.limits.max_deliveries)
            if new is None:
                log.info("dead letter %s was refused by a consumer and escalated then", headers.get("id"))
            elif runtime.client.exists(keys.result(new.task_id)):
                log.info("dead letter %s: its job has its final result already", new.task_id)
            else:
                result = runtime.handoff.escalate(new)
                runtime.app.backend.store_result(new.task_id, result.model_dump(mode="json"), "SUCCESS")
        except BrokerError as exc:
            log.warning("dead letter %s: Redis is away (%s); back to its queue", headers.get("id"), exc)
            message.requeue()
            return
        message.ack()
