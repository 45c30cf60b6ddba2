"""A Celery consumer that dead-letters poison messages instead of dropping them.

Celery on Redis deletes a message it cannot decode, whose task it does not know, or whose
content type it refuses (pickle). Here each of them is first persisted as an escalation with its
reason (``invalid_message``, ``unknown_task``), then acked as before; the worker keeps consuming.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery.worker.consumer import Consumer

from fleet.discovery import redis_client
from fleet.escalations import EscalationStore, NewEscalation

__all__ = ["FleetConsumer"]

log = logging.getLogger(__name__)


def _task_id(message: Any) -> str:
    headers = getattr(message, "headers", None) or {}
    task_id = headers.get("id") if isinstance(headers, dict) else None
    if task_id:
        return str(task_id)
    properties = getattr(message, "properties", None) or {}
    tag = properties.get("delivery_tag") or (getattr(message, "delivery_info", None) or {}).get(
        "delivery_tag"
    )
    return f"poison-{tag or uuid.uuid4().hex}"


class FleetConsumer(Consumer):
    """Persists a dead letter before Celery acks or rejects a poison message."""

    def _dead_letter(self, message: Any, reason: str, detail: str) -> None:
        try:
            queue = (getattr(message, "delivery_info", None) or {}).get("routing_key")
            body = getattr(message, "body", None)
            EscalationStore(redis_client(self.app.fleet_settings)).create(
                NewEscalation(
                    task_id=_task_id(message),
                    reason=reason,
                    detail=detail,
                    request=body if isinstance(body, bytes | str) else repr(body),
                    tier=queue if queue in ("mini", "standard", "full", "fast") else None,
                    queue=queue,
                )
            )
        except Exception:
            log.exception("could not dead-letter a poison message (%s)", reason)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._dead_letter(message, "invalid_message", f"cannot decode the message body: {exc}")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, "invalid_message", "not a Celery task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        headers = getattr(message, "headers", None) or {}
        name = headers.get("task") if isinstance(headers, dict) else None
        self._dead_letter(message, "unknown_task", f"unknown task name {name!r}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, "invalid_message", f"invalid task message: {exc}")
        super().on_invalid_task(body, message, exc)
