"""A Celery consumer that hands poison messages to people instead of dropping them.

Celery on Redis deletes a message it cannot decode, whose task it does not know, or whose
content type it refuses (pickle). Here each of them is first persisted as an escalation with its
reason (``invalid_message``, ``unknown_task``), then acked as before; the worker keeps consuming.

Celery also lets some malformed messages kill the consumer itself ("Unrecoverable error"): a JSON
body that is not ``[args, kwargs, embed]`` raises in the strategy, and since the message is restored
on shutdown, every restarted worker died on it again. So before a message reaches Celery it is
checked here: its body must be at most :data:`MAX_BODY_SLACK` over the prompt limit, be
``[args, kwargs, embed]`` and fit the task's signature; anything else is an ``invalid_message``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from celery.exceptions import InvalidTaskError
from celery.worker import loops
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed, DecodeError

from fleet.app import FleetCelery
from fleet.errors import Reason
from fleet.escalations import NewEscalation
from fleet.models import Tier
from fleet.runtime import get_runtime
from fleet.settings import Settings

__all__ = ["FleetConsumer"]

log = logging.getLogger(__name__)

#: Bytes a message body may carry beyond ``limits.max_prompt_bytes`` (system, schema, envelope).
MAX_BODY_SLACK = 2 * 1024 * 1024


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
    """Persists a dead letter before Celery acks or rejects a poison message, and publishes task
    events in batches.

    Celery buffers a worker's task events and flushes them on the next pass of its event loop: at
    load, about one PUBLISH per event, three per task, which costs the worker's main process a
    third of its time (docs/performance.md). Here the flush waits ``flower.events_flush_ms``, so
    the events of every task in that window go out as one ``task.multi`` message; Flower and
    ``celery events`` read those as the single events they hold.
    """

    _flush_pending = False
    # Celery's, left out of the stubs: the event loop, and the flush of buffered task events.
    hub: Any
    _flush_events: Callable[[], None]

    @property
    def fleet_settings(self) -> Settings:
        app: FleetCelery = self.app  # type: ignore[assignment]  # the fleet's app runs every fleet worker
        return app.fleet_settings

    def on_send_event_buffered(self) -> Any:
        delay_ms = self.fleet_settings.flower.events_flush_ms
        if not self.hub or delay_ms <= 0:
            super().on_send_event_buffered()
        elif not self._flush_pending:
            self._flush_pending = True
            self.hub.call_later(delay_ms / 1000.0, self._flush_batched)

    def loop(self, *args: Any) -> Any:
        """Celery's event loop (``asynloop``); on the pool's own loop where the pool runs one
        (:meth:`fleet.asyncio_pool.AsyncioPool.run_consumer_loop`)."""
        if not self.hub:
            return loops.synloop(*args)
        run_on_pool = getattr(self.pool, "run_consumer_loop", None)
        if run_on_pool is None:
            return loops.asynloop(*args)
        return run_on_pool(loops.asynloop, *args)

    def _flush_batched(self) -> None:
        self._flush_pending = False
        self._flush_events()

    def shutdown(self) -> None:
        try:  # what the last window gathered, before the dispatcher closes
            self._flush_events()
        except Exception:
            log.debug("could not flush task events at shutdown", exc_info=True)
        super().shutdown()

    def _dead_letter(self, message: Any, reason: Reason, detail: str) -> None:
        try:
            queue = (getattr(message, "delivery_info", None) or {}).get("routing_key")
            body = getattr(message, "body", None)
            get_runtime().handoff.escalate(
                NewEscalation(
                    task_id=_task_id(message),
                    reason=reason,
                    detail=detail,
                    request=body if isinstance(body, bytes | str) else repr(body),
                    tier=Tier.of(queue),
                    queue=queue,
                )
            )
        except Exception:
            log.exception("could not dead-letter a poison message (%s)", reason)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._dead_letter(message, Reason.INVALID_MESSAGE, f"cannot decode the message body: {exc}")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, Reason.INVALID_MESSAGE, "not a Celery task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        headers = getattr(message, "headers", None) or {}
        name = headers.get("task") if isinstance(headers, dict) else None
        self._dead_letter(message, Reason.UNKNOWN_TASK, f"unknown task name {name!r}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, Reason.INVALID_MESSAGE, f"invalid task message: {exc}")
        super().on_invalid_task(body, message, exc)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        handler = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            try:
                problem = self._malformed(message)
                if problem is not None:
                    return self.on_invalid_task(None, message, InvalidTaskError(problem))
                return handler(message)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                # Celery calls these "unrecoverable" and stops the worker; it is only a bad message.
                return self.on_invalid_task(None, message, InvalidTaskError(f"malformed message: {exc!r}"))

        return on_task_received

    def _malformed(self, message: Any) -> str | None:
        """Why a message would break Celery or its task, or None (decode errors are Celery's)."""
        body = getattr(message, "body", None)
        limit = self.fleet_settings.limits.max_prompt_bytes + MAX_BODY_SLACK
        if isinstance(body, bytes | str) and len(body) > limit:
            return f"oversized message: {len(body)} bytes, over the limit of {limit}"
        headers = getattr(message, "headers", None)
        name = headers.get("task") if isinstance(headers, dict) else None
        task = self.app.tasks.get(name) if isinstance(name, str) else None
        if task is None:
            return None  # unknown task or protocol 1: Celery's own handlers dead-letter those
        try:
            payload = message.decode()
        except ContentDisallowed as exc:
            return f"refused: {exc}"  # pickle and friends: never deserialized
        except (DecodeError, ValueError, TypeError):
            return None  # on_decode_error dead-letters it
        if not (
            isinstance(payload, list | tuple)
            and len(payload) == 3
            and isinstance(payload[0], list | tuple)
            and isinstance(payload[1], dict)
            and isinstance(payload[2], dict | None)
        ):
            return "the body is not [args, kwargs, embed]"
        try:
            signature: Callable[..., Any] = task.__header__  # type: ignore[attr-defined]  # Celery's
            signature(*payload[0], **payload[1])
        except TypeError as exc:
            return f"arguments do not fit {task.name}: {exc}"
        return None
