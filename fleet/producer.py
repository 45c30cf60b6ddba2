"""Submit jobs and read their results, from any service. Enqueues by task name only.

import fleet
task_id = fleet.submit({"prompt": "Summarise this ticket: ...", "kind": "support.summary"})
result = fleet.result(task_id, timeout=60)
print(result.tier, result.model, result.answer)

Every job gets a record when it is enqueued (``fleet:job:<id>``), so an id nobody submitted is
"not found" at once (:class:`fleet.errors.TaskNotFound`) instead of an endless wait. Results are
read with the fleet's own Redis client: a GET of the result key, and a subscription to the channel
the worker publishes it on, so waiting costs no polling. Every broker failure is a
:class:`fleet.errors.BrokerError` (:mod:`fleet.boundary`).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.trace import SpanKind

from fleet import keys, telemetry
from fleet.app import ARGS_REPR, EXECUTE_TASK, ROUTE_TASK, FleetCelery, create_app
from fleet.boundary import BoundaryRedis, broker_errors
from fleet.discovery import broker_url, redis_client
from fleet.errors import ResultTimeout, TaskFailed, TaskNotFound
from fleet.models import JobEnvelope, JobStatus, RoutingDecision, TaskRequest, TaskResult, validate_request
from fleet.pipelines.config import known
from fleet.settings import Settings, get_settings

__all__ = ["Client", "decode_result", "default_client", "enqueue", "result", "submit"]

#: How often ``result(..., until_answered=True)`` looks for a person's answer, in seconds.
_ANSWER_POLL_S = 0.2
#: Longest a waiting ``result`` trusts its subscription alone before it reads the key again.
_RECHECK_S = 1.0


class Client:
    """A producer bound to one fleet (one broker). Thread-safe; build one and keep it."""

    def __init__(self, settings: Settings | None = None, *, redis_url: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.redis_url = redis_url or broker_url(self.settings)
        self.app: FleetCelery = create_app(self.settings, self.redis_url)
        self.redis: BoundaryRedis = redis_client(self.settings, self.redis_url)
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
        if req.pipeline is not None:
            known(self.settings.pipelines, req.pipeline)
        payload = req.model_dump(mode="json", exclude_defaults=True)
        task_id = uuid.uuid4().hex
        attributes = {
            "fleet.task_id": task_id,
            "fleet.kind": req.kind,
            "fleet.tier": req.tier and str(req.tier),
        }
        with telemetry.span("submit", kind=SpanKind.PRODUCER, attributes=attributes):
            return self._send(req, payload, task_id)

    def _send(self, req: TaskRequest, payload: dict[str, Any], task_id: str) -> str:
        """Enqueue a validated request (the trace context rides in the message headers)."""
        if req.idempotency_key is not None:
            key = keys.idempotency(req.idempotency_key)
            ttl = self.settings.broker.idempotency_ttl_s
            if not self.redis.set(key, task_id, nx=True, ex=ttl):
                existing = self.redis.get(key)
                if existing is not None:
                    return existing.decode() if isinstance(existing, bytes) else str(existing)
        envelope = JobEnvelope(id=task_id, submitted_at=time.time())
        if req.tier is not None:
            # A pinned job skips the router hop (precedence rule 1).
            envelope.routing = RoutingDecision(
                tier=req.tier, reasons=[f"pinned to tier {req.tier} by the producer"], classifier="pinned"
            )
        enqueue(self.app, self.settings, payload, envelope, self.redis)
        return task_id

    def result(
        self, task_id: str, timeout: float | None = None, *, until_answered: bool = False
    ) -> TaskResult:
        """Wait for a job's final state (completed or escalated).

        With ``until_answered``, an escalated job is not final: keep waiting until a person resolves
        or discards it (or retries it and the retry completes), within the same ``timeout``.

        Raises:
            TaskNotFound: no job was ever submitted under ``task_id``.
            ResultTimeout: no final state (no answer, with ``until_answered``) within ``timeout`` seconds.
            TaskFailed: the task raised in the worker.
            BrokerError: the broker cannot be reached.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        res = self._wait_final(task_id, deadline, timeout)
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

    def _wait_final(self, task_id: str, deadline: float | None, timeout: float | None) -> TaskResult:
        # Subscribe before the first read: a result published in between is not missed.
        open_pubsub: Any = self.redis.pubsub  # untyped in redis-py
        pubsub = open_pubsub(ignore_subscribe_messages=True)
        with broker_errors(self.redis_url):
            try:
                pubsub.subscribe(keys.result(task_id))
                while True:
                    status = self.status(task_id)
                    if status.state == "failed":
                        raise TaskFailed(f"task {task_id} failed in the worker (see the worker's log)")
                    if status.result is not None:
                        return status.result
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise ResultTimeout(f"task {task_id} has no final state after {timeout} s")
                    pubsub.get_message(timeout=_RECHECK_S if left is None else min(left, _RECHECK_S))
            finally:
                pubsub.close()

    def status(self, task_id: str) -> JobStatus:
        """Where a job is: ``queued`` (on its way: waiting, routed or running) or its final state.

        Raises:
            TaskNotFound: no job was ever submitted under ``task_id`` (or its record expired).
            BrokerError: the broker cannot be reached.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(keys.result(task_id))
        pipe.hgetall(keys.job(task_id))
        raw, record = pipe.execute()
        fields = {_text(k): _text(v) for k, v in (record or {}).items()}
        queue = fields.get("queue")
        submitted = float(fields["submitted_at"]) if "submitted_at" in fields else None
        if raw is not None:
            meta = json.loads(raw)
            if meta.get("status") == "SUCCESS" and isinstance(meta.get("result"), dict):
                res = TaskResult.model_validate(meta["result"])
                return JobStatus(
                    task_id=task_id, state=res.status, queue=queue, submitted_at=res.submitted_at, result=res
                )
            if meta.get("status") == "FAILURE":
                return JobStatus(task_id=task_id, state="failed", queue=queue, submitted_at=submitted)
        if not fields:
            raise TaskNotFound(task_id)
        return JobStatus(task_id=task_id, state="queued", queue=queue, submitted_at=submitted)

    def peek(self, task_ids: Iterable[str]) -> dict[str, TaskResult]:
        """The final results among ``task_ids`` that have one, in one round trip."""
        ids = list(task_ids)
        if not ids:
            return {}
        raw = self.redis.mget([keys.result(i) for i in ids])
        out: dict[str, TaskResult] = {}
        for task_id, value in zip(ids, raw, strict=True):
            res = decode_result(value) if value is not None else None
            if res is not None:
                out[task_id] = res
        return out

    def close(self) -> None:
        self.app.close()


def decode_result(value: bytes | str) -> TaskResult | None:
    """A job's final result from its result key's value (None for Celery's state of a task that
    raised, which is no job's final result)."""
    meta = json.loads(value)
    if meta.get("status") == "SUCCESS" and isinstance(meta.get("result"), dict):
        return TaskResult.model_validate(meta["result"])
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def enqueue(
    app: FleetCelery,
    settings: Settings,
    payload: dict[str, Any],
    envelope: JobEnvelope,
    client: BoundaryRedis,
) -> None:
    """Send a job on its way under its own id: to its tier's queue when the envelope already
    carries a routing decision (a pinned job, a person's retry on a tier), else to the router.

    The job's record is written first (its state ``queued`` and the queue), so the id is known
    from the moment the message can be consumed.

    Raises:
        BrokerError: the broker cannot be reached.
    """
    args = [payload, envelope.model_dump(mode="json")]
    queue = str(envelope.routing.tier) if envelope.routing is not None else "router"
    record = keys.job(envelope.id)
    pipe = client.pipeline(transaction=False)
    pipe.hset(
        record, mapping={"state": "queued", "queue": queue, "submitted_at": repr(envelope.submitted_at)}
    )
    pipe.expire(record, settings.broker.result_expires_s)
    pipe.execute()
    with broker_errors(client.fleet_url):
        if envelope.routing is not None:
            timeout = settings.tier(queue).timeout_s
            app.send_task(
                EXECUTE_TASK,
                args=args,
                task_id=envelope.id,
                queue=queue,
                time_limit=math.ceil(timeout + 30),
                soft_time_limit=math.ceil(timeout),
                argsrepr=ARGS_REPR,
                kwargsrepr="{}",
            )
        else:
            app.send_task(
                ROUTE_TASK, args=args, task_id=f"route-{envelope.id}", queue="router",
                argsrepr=ARGS_REPR, kwargsrepr="{}",
            )  # fmt: skip


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
