"""Submit jobs and read their results, from any service. Enqueues by task name only.

import fleet
task_id = fleet.submit({"prompt": "Summarise this ticket: ...", "kind": "support.summary"})
result = fleet.result(task_id, timeout=60)
print(result.tier, result.model, result.answer)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from opentelemetry.trace import SpanKind

from fleet import keys, telemetry
from fleet.app import ARGS_REPR, EXECUTE_TASK, ROUTE_TASK, FleetCelery, create_app
from fleet.discovery import broker_url, redis_client
from fleet.errors import BrokerError, ResultTimeout, TaskFailed
from fleet.models import JobEnvelope, RoutingDecision, TaskRequest, TaskResult, validate_request
from fleet.settings import Settings, get_settings

__all__ = ["Client", "default_client", "enqueue", "result", "submit"]

#: How often ``result(..., until_answered=True)`` looks for a person's answer, in seconds.
_ANSWER_POLL_S = 0.2


class Client:
    """A producer bound to one fleet (one broker). Thread-safe; build one and keep it."""

    def __init__(self, settings: Settings | None = None, *, redis_url: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.redis_url = redis_url or broker_url(self.settings)
        self.app: FleetCelery = create_app(self.settings, self.redis_url)
        self.redis = redis_client(self.settings, self.redis_url)
        telemetry.setup(self.settings, role="producer")  # a no-op unless OTEL_* or a trace file asks

    def submit(self, request: TaskRequest | Mapping[str, Any] | str) -> str:
        """Validate and enqueue a job; return its task id.

        An idempotency key seen before returns the first task id and enqueues nothing.

        Raises:
            InvalidRequest: the request is not valid; nothing was enqueued.
            BrokerError: the broker cannot be reached.
        """
        if isinstance(request, Mapping):
            request = dict(request)
        req = validate_request(request, max_prompt_bytes=self.settings.limits.max_prompt_bytes)
        payload = req.model_dump(mode="json", exclude_defaults=True)
        task_id = uuid.uuid4().hex
        with telemetry.span(
            "submit",
            kind=SpanKind.PRODUCER,
            attributes={
                "fleet.task_id": task_id,
                "fleet.kind": req.kind,
                "fleet.tier": req.tier and str(req.tier),
            },
        ):
            return self._send(req, payload, task_id)

    def _send(self, req: TaskRequest, payload: dict[str, Any], task_id: str) -> str:
        """Enqueue a validated request (the trace context rides in the message headers)."""
        try:
            if req.idempotency_key is not None:
                key = keys.idempotency(req.idempotency_key)
                ttl = self.settings.broker.idempotency_ttl_s
                if not self.redis.set(key, task_id, nx=True, ex=ttl):
                    existing = self.redis.get(key)
                    if existing is not None:
                        return existing.decode() if isinstance(existing, bytes) else str(existing)
        except Exception as exc:
            if _is_broker_error(exc):
                raise BrokerError(f"cannot reach the broker: {exc}") from exc
            raise
        envelope = JobEnvelope(id=task_id, submitted_at=time.time())
        if req.tier is not None:
            # A pinned job skips the router hop (precedence rule 1).
            envelope.routing = RoutingDecision(
                tier=req.tier, reasons=[f"pinned to tier {req.tier} by the producer"], classifier="pinned"
            )
        enqueue(self.app, self.settings, payload, envelope)
        return task_id

    def result(
        self, task_id: str, timeout: float | None = None, *, until_answered: bool = False
    ) -> TaskResult:
        """Wait for a job's final state (completed or escalated).

        With ``until_answered``, an escalated job is not final: keep waiting until a person resolves
        or discards it (or retries it and the retry completes), within the same ``timeout``.

        Raises:
            ResultTimeout: no final state (no answer, with ``until_answered``) within ``timeout`` seconds.
            TaskFailed: the task raised in the worker.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        res = self._wait_final(task_id, timeout)
        while until_answered and res.status == "escalated":
            # People answer in minutes, not milliseconds: a cheap GET every 0.2 s is plenty, and it
            # also sees a retry (the key is deleted, then written by the retried run).
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(
                    f"task {task_id} is escalated ({res.escalation_id}); nobody answered within {timeout} s"
                )
            time.sleep(_ANSWER_POLL_S)
            res = self.peek([task_id]).get(task_id, res)
        return res

    def _wait_final(self, task_id: str, timeout: float | None) -> TaskResult:
        async_result = AsyncResult(task_id, app=self.app)
        try:
            value = async_result.get(timeout=timeout, propagate=False, interval=0.05)
        except CeleryTimeout:
            raise ResultTimeout(f"task {task_id} has no final state after {timeout} s") from None
        finally:
            async_result.backend.remove_pending_result(async_result)
        if async_result.state != "SUCCESS":
            raise TaskFailed(f"task {task_id} failed in the worker: {value!r}")
        return TaskResult.model_validate(value)

    def peek(self, task_ids: Iterable[str]) -> dict[str, TaskResult]:
        """The final results among ``task_ids`` that have one, in one round trip."""
        ids = list(task_ids)
        if not ids:
            return {}
        backend = self.app.backend
        raw = self.redis.mget([backend.get_key_for_task(i).decode() for i in ids])
        out: dict[str, TaskResult] = {}
        for task_id, value in zip(ids, raw, strict=True):
            if value is None:
                continue
            meta = backend.decode_result(value)
            if meta.get("status") == "SUCCESS" and isinstance(meta.get("result"), dict):
                out[task_id] = TaskResult.model_validate(meta["result"])
        return out

    def state(self, task_id: str) -> str:
        """Celery's state of the job: PENDING (queued or routing), SUCCESS, FAILURE, ..."""
        return str(AsyncResult(task_id, app=self.app).state)

    def close(self) -> None:
        self.app.close()


_BROKER_LIBRARIES = ("kombu", "redis", "celery", "amqp")


def _is_broker_error(exc: Exception) -> bool:
    """A connection or protocol error of the broker (kombu and redis raise their own)."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in (
        "kombu",
        "redis",
        "celery",
        "amqp",
    )


def enqueue(app: FleetCelery, settings: Settings, payload: dict[str, Any], envelope: JobEnvelope) -> None:
    """Send a job on its way under its own id: to its tier's queue when the envelope already
    carries a routing decision (a pinned job, a person's retry on a tier), else to the router.

    Raises:
        BrokerError: the broker cannot be reached.
    """
    args = [payload, envelope.model_dump(mode="json")]
    try:
        if envelope.routing is not None:
            tier = envelope.routing.tier
            timeout = settings.tier(tier).timeout_s
            app.send_task(
                EXECUTE_TASK,
                args=args,
                task_id=envelope.id,
                queue=str(tier),
                time_limit=timeout + 30,
                soft_time_limit=timeout,
                argsrepr=ARGS_REPR,
                kwargsrepr="{}",
            )
        else:
            app.send_task(
                ROUTE_TASK,
                args=args,
                task_id=f"route-{envelope.id}",
                queue="router",
                argsrepr=ARGS_REPR,
                kwargsrepr="{}",
            )
    except Exception as exc:
        if _is_broker_error(exc):
            raise BrokerError(f"cannot enqueue: {exc}") from exc
        raise


_default: Client | None = None


def default_client() -> Client:
    """The process's client, built from the environment on first use."""
    global _default
    if _default is None:
        _default = Client()
    return _default


def submit(request: TaskRequest | Mapping[str, Any] | str) -> str:
    """Validate and enqueue a job on the default fleet; return its task id (see :meth:`Client.submit`)."""
    return default_client().submit(request)


def result(task_id: str, timeout: float | None = None, *, until_answered: bool = False) -> TaskResult:
    """Wait for a job's final state on the default fleet (see :meth:`Client.result`)."""
    return default_client().result(task_id, timeout, until_answered=until_answered)
