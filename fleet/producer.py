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

A submission is the same three steps for one job or many (``submit`` is a batch of one): validate
every request (:func:`prepare_many`; nothing is written unless all are valid), claim the idempotency
keys (one script call, :func:`claims` / :func:`settle`), then write the job records in one pipeline
and publish the messages on one broker connection (:func:`enqueue_many`). :mod:`fleet.aio` runs the
same steps on ``redis.asyncio``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import SpanKind

from fleet import keys, scripts, telemetry
from fleet.app import ARGS_REPR, BATCH_TASK, EXECUTE_TASK, ROUTE_TASK, FleetCelery, create_app
from fleet.batch.config import batch_link
from fleet.boundary import BoundaryRedis, broker_errors
from fleet.budgets import enforce_read, queue_spend_reads, teams_to_check
from fleet.discovery import broker_url, redis_client
from fleet.errors import InvalidRequest, ResultTimeout, TaskFailed, TaskNotFound
from fleet.fairness import FairnessSettings, marked_team, queue_wait
from fleet.models import (
    JobEnvelope,
    JobStatus,
    RoutingDecision,
    TaskRequest,
    TaskResult,
    Tier,
    validate_request,
)
from fleet.pipelines.config import known
from fleet.router import decide
from fleet.settings import Settings, get_settings

__all__ = [
    "ANSWER_POLL_S",
    "RECHECK_S",
    "Client",
    "Outgoing",
    "Request",
    "claims",
    "decode_result",
    "default_client",
    "enqueue",
    "enqueue_many",
    "prepare",
    "prepare_many",
    "publish",
    "queue_records",
    "result",
    "settle",
    "status_of",
    "submit",
]

#: How often ``result(..., until_answered=True)`` looks for a person's answer, in seconds.
ANSWER_POLL_S = 0.2
#: Longest a waiting ``result`` trusts its subscription alone before it reads the key again.
RECHECK_S = 1.0

#: What ``submit`` takes: a ``TaskRequest``, a dict of its fields, or that dict as a JSON string.
Request = TaskRequest | Mapping[str, Any] | str


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A job ready to be sent: its request as it travels, its envelope (id, submission time, a pinned
    tier's routing), its idempotency key, and its ``submit`` span's attributes (None: no span of its
    own, for a job a worker or a person sends on)."""

    payload: dict[str, Any]
    envelope: JobEnvelope
    idempotency_key: str | None = None
    span: dict[str, Any] | None = None
    #: Routed here and able to wait: it goes to the batch lane (fleet.batch), not its tier's queue.
    batch: bool = False

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def priority(self) -> int:
        """Its message's priority: the request's (validated before it got here), 0 to 9."""
        return int(self.payload.get("priority", 0))


class Client:
    """A producer bound to one fleet (one broker). Thread-safe; build one and keep it."""

    def __init__(self, settings: Settings | None = None, *, redis_url: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.redis_url = redis_url or broker_url(self.settings)
        self.app: FleetCelery = create_app(self.settings, self.redis_url)
        self.redis: BoundaryRedis = redis_client(self.settings, self.redis_url)
        self._claim = scripts.register(self.redis, "claim")
        telemetry.setup(self.settings, role="producer")  # a no-op unless OTEL_* or a trace file asks

    def submit(self, request: Request) -> str:
        """Validate and enqueue a job; return its task id.

        An idempotency key seen before returns the first task id and enqueues nothing.

        Raises:
            InvalidRequest: the request is not valid; nothing was enqueued.
            BrokerError: the broker cannot be reached.
        """
        return self._send([prepare(self.settings, request)])[0]

    def submit_many(self, requests: Iterable[Request]) -> list[str]:
        """Validate every request, then enqueue them all; return their task ids, in order.

        The Redis writes are pipelined (the idempotency keys in one script call, the job records in
        one round trip) and the messages go out on one broker connection. A request whose
        idempotency key was seen before, earlier or earlier in this batch, gets the first task id
        and is not enqueued again.

        Raises:
            InvalidRequest: a request is not valid, each problem named by its index
                (``requests[3].prompt: ...``); nothing was enqueued.
            BrokerError: the broker cannot be reached.
        """
        return self._send(prepare_many(self.settings, requests))

    def _send(self, jobs: Sequence[Outgoing]) -> list[str]:
        teams = teams_to_check(self.settings.budgets, (job.payload for job in jobs))
        if teams:  # one round trip, only for a batch with a team that has a budget
            pipe = self.redis.pipeline(transaction=False)
            queue_spend_reads(pipe, teams, time.time())
            enforce_read(self.settings.budgets, jobs, teams, pipe.execute())
        names, args = claims(jobs, self.settings.broker.idempotency_ttl_s)
        firsts = self._claim(keys=names, args=args) if names else []
        ids, fresh = settle(jobs, firsts)
        enqueue_many(self.app, self.settings, fresh, self.redis)
        return ids

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
            time.sleep(ANSWER_POLL_S)
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
                    got = settled(self.status(task_id), deadline, timeout)
                    if isinstance(got, TaskResult):
                        return got
                    pubsub.get_message(timeout=got)
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
        return status_of(task_id, raw, record)

    def cancel(self, task_id: str) -> JobStatus:
        """Cancel a job: one still queued ends ``cancelled`` when a worker reaches it, without a call;
        one running stops after its current call and is charged only the calls it made; a pipeline
        sends no further step. A job already final is left as it is; cancelling twice is harmless.
        Returns the job's status after the mark.

        Raises:
            TaskNotFound: no job was ever submitted under ``task_id``.
            BrokerError: the broker cannot be reached.
        """
        script = self.redis.register_script(scripts.source("cancel"))
        marked = script(keys=[keys.result(task_id), keys.job(task_id)], args=[repr(time.time())])
        if _text(marked) == "unknown":
            raise TaskNotFound(task_id)
        return self.status(task_id)

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


def prepare(settings: Settings, request: Request) -> Outgoing:
    """A request validated into a job ready to send, under a new task id (no I/O).

    Raises:
        InvalidRequest: the request is not valid (or names a pipeline that is not configured).
    """
    if isinstance(request, Mapping):
        request = dict(request)
    req = validate_request(request, max_prompt_bytes=settings.limits.max_prompt_bytes)
    if req.pipeline is not None:
        known(settings.pipelines, req.pipeline)
    task_id = uuid.uuid4().hex
    envelope = JobEnvelope(id=task_id, submitted_at=time.time())
    if req.tier is not None:
        # A pinned job skips the router hop (precedence rule 1).
        envelope.routing = RoutingDecision(
            tier=req.tier, reasons=[f"pinned to tier {req.tier} by the producer"], classifier="pinned"
        )
    elif req.pipeline is None:
        envelope.routing = _routed_here(settings, req)
    lane = envelope.routing is not None and batch_link(settings, req, envelope.routing) is not None
    return Outgoing(
        batch=lane,
        payload=req.model_dump(mode="json", exclude_defaults=True),
        envelope=envelope,
        idempotency_key=req.idempotency_key,
        span={"fleet.task_id": task_id, "fleet.kind": req.kind, "fleet.tier": req.tier and str(req.tier)},
    )


def _routed_here(settings: Settings, req: TaskRequest) -> RoutingDecision | None:
    """The job's routing when the producer routes it itself (``router.in_producer``: the heuristic,
    about 50 µs), else None (the router worker does)."""
    mode = settings.router.in_producer
    if mode == "off" or settings.router.classifier != "heuristic":
        return None
    decision = decide(req, settings.router)
    if mode == "fast" and decision.tier is not Tier.FAST:
        return None
    decision.reasons.append("routed in the producer (router.in_producer)")
    return decision


def prepare_many(settings: Settings, requests: Iterable[Request]) -> list[Outgoing]:
    """Every request validated (:func:`prepare`), or an error naming each bad one by its index.

    Raises:
        InvalidRequest: one line per problem, ``requests[3].prompt: ...``.
    """
    if isinstance(requests, str | bytes | Mapping | TaskRequest):
        raise InvalidRequest([f"requests: a list of task requests, got {type(requests).__name__}"])
    jobs: list[Outgoing] = []
    errors: list[str] = []
    for index, request in enumerate(requests):
        try:
            jobs.append(prepare(settings, request))
        except InvalidRequest as exc:
            errors.extend(_at(index, line) for line in exc.errors)
    if errors:
        raise InvalidRequest(errors)
    return jobs


def _at(index: int, line: str) -> str:
    """One request's error line as one of many: ``prompt: ...`` -> ``requests[3].prompt: ...``."""
    where, sep, what = line.partition(": ")
    if not sep or " " in where:
        return f"requests[{index}]: {line}"
    if where == "request":
        return f"requests[{index}]: {what}"
    return f"requests[{index}].{line}"


def claims(jobs: Sequence[Outgoing], ttl_s: int) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of the ``claim`` script for the jobs that carry an idempotency key (two empty
    lists when none does: no round trip)."""
    keyed = [job for job in jobs if job.idempotency_key is not None]
    if not keyed:
        return [], []
    return [keys.idempotency(str(job.idempotency_key)) for job in keyed], [str(ttl_s), *(j.id for j in keyed)]


def settle(jobs: Sequence[Outgoing], firsts: Sequence[bytes | str]) -> tuple[list[str], list[Outgoing]]:
    """Each job's task id given the ``claim`` script's reply (the first id under each key, in the
    order of the keyed jobs), and the jobs to send: those whose id is their own."""
    replies = iter(firsts)
    ids = [job.id if job.idempotency_key is None else _text(next(replies)) for job in jobs]
    return ids, [job for job, task_id in zip(jobs, ids, strict=True) if task_id == job.id]


def settled(status: JobStatus, deadline: float | None, timeout: float | None) -> TaskResult | float:
    """A waiting producer's next step: the job's final result, or how long to wait for it to be
    published before looking again.

    Raises:
        TaskFailed: the task raised in the worker.
        ResultTimeout: ``deadline`` passed.
    """
    if status.state == "failed":
        raise TaskFailed(f"task {status.task_id} failed in the worker (see the worker's log)")
    if status.result is not None:
        return status.result
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left <= 0:
        raise ResultTimeout(f"task {status.task_id} has no final state after {timeout} s")
    return RECHECK_S if left is None else min(left, RECHECK_S)


def status_of(task_id: str, raw: bytes | str | None, record: Mapping[Any, Any] | None) -> JobStatus:
    """A job's status from its result key's value and its record (:meth:`Client.status`).

    Raises:
        TaskNotFound: neither exists.
    """
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
    return on_its_way(task_id, fields)


def queue_routing(
    pipe: Any, task_id: str, decision: RoutingDecision, ttl_s: int, *,
    team: str | None = None, fairness: FairnessSettings | None = None,
) -> None:  # fmt: skip
    """Queue on ``pipe`` the router's decision on the job's record (state ``routed``), written before
    the job is sent on to its tier (so the tier's ``running`` cannot be overwritten by it; the route
    task makes it in the publish's round trip, :func:`fleet.transport.writes_with_publish`). With
    ``team`` and ``fairness`` on, the job is marked waiting for its team's share of the tier too."""
    pipe.hset(
        keys.job(task_id),
        mapping={"state": "routed", "queue": str(decision.tier), "tier": str(decision.tier),
                 "reasons": json.dumps(decision.reasons), "since": repr(time.time())},
    )  # fmt: skip
    pipe.expire(keys.job(task_id), ttl_s)
    if team is not None and fairness is not None and fairness.enabled:
        queue_wait(pipe, str(decision.tier), team, task_id, fairness.wait_ttl_s)


def on_its_way(task_id: str, fields: dict[str, str]) -> JobStatus:
    """A job's status from its record, before it has a final result (``queued``, ``routed`` or
    ``running``; a record written by an older fleet says only ``queued``)."""
    state = fields.get("state", "queued")
    reasons = json.loads(fields["reasons"]) if "reasons" in fields else []
    return JobStatus(
        task_id=task_id,
        state=state if state in ("queued", "routed", "batched", "running") else "queued",
        queue=fields.get("queue"),
        submitted_at=float(fields["submitted_at"]) if "submitted_at" in fields else None,
        since=float(fields["since"]) if "since" in fields else None,
        tier=Tier.of(fields.get("tier")),
        reasons=reasons if isinstance(reasons, list) else [],
        worker=fields.get("worker"),
        link=fields.get("link"),
        attempt=int(fields["attempt"]) if fields.get("attempt", "").isdigit() else None,
        cancelling="cancelled" in fields,
    )


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

    Raises:
        BrokerError: the broker cannot be reached.
    """
    enqueue_many(app, settings, [Outgoing(payload, envelope)], client)


def enqueue_many(
    app: FleetCelery, settings: Settings, jobs: Sequence[Outgoing], client: BoundaryRedis
) -> None:
    """Send jobs on their way (:func:`enqueue`): their records in one round trip first (state
    ``queued`` and the queue), so each id is known from the moment its message can be consumed, then
    their messages on one broker connection (:func:`publish`).

    Raises:
        BrokerError: the broker cannot be reached.
    """
    if not jobs:
        return
    pipe = client.pipeline(transaction=False)
    queue_records(pipe, jobs, settings.broker.result_expires_s, settings=settings)
    pipe.execute()
    publish(app, settings, jobs, client.fleet_url)


def queue_records(
    pipe: Any, jobs: Iterable[Outgoing], ttl_s: int, *, settings: Settings | None = None
) -> None:
    """Queue on ``pipe`` (redis-py's, or redis.asyncio's) each job's record: state ``queued``, the
    queue its message goes to, when it was submitted. With ``settings``, a team's job sent straight
    to a tier's queue is also marked waiting for its team's share of the tier (:mod:`fleet.fairness`)."""
    since = repr(time.time())
    for job in jobs:
        record = keys.job(job.id)
        fields = {"state": "queued", "queue": _queue(job),
                  "submitted_at": repr(job.envelope.submitted_at), "since": since}  # fmt: skip
        routing = job.envelope.routing
        if routing is not None and routing.classifier != "pinned":  # routed here (in_producer, budget)
            fields |= {"state": "routed", "tier": str(routing.tier), "reasons": json.dumps(routing.reasons)}
        pipe.hset(record, mapping=fields)
        pipe.expire(record, ttl_s)
        if (
            settings is not None and routing is not None and fields["queue"] == str(routing.tier)
            and (team := marked_team(settings, job.payload.get("metadata"))) is not None
        ):  # fmt: skip
            queue_wait(pipe, fields["queue"], team, job.id, settings.fairness.wait_ttl_s)


def publish(app: FleetCelery, settings: Settings, jobs: Iterable[Outgoing], url: str | None) -> None:
    """Publish each job's message (the trace context rides in its headers), all on one producer
    connection. Blocking: :mod:`fleet.aio` calls it in a worker thread.

    Raises:
        BrokerError: the broker cannot be reached.
    """
    with broker_errors(url), app.producer_or_acquire() as producer:
        for job in jobs:
            with _submit_span(job):
                _send_task(app, settings, job, producer)


@contextmanager
def _submit_span(job: Outgoing) -> Iterator[None]:
    if job.span is None:
        yield
        return
    with telemetry.span("submit", kind=SpanKind.PRODUCER, attributes=job.span):
        yield


def _queue(job: Outgoing) -> str:
    if job.batch:
        return "batch"
    return str(job.envelope.routing.tier) if job.envelope.routing is not None else "router"


def _send_task(app: FleetCelery, settings: Settings, job: Outgoing, producer: Any) -> None:
    args = [job.payload, job.envelope.model_dump(mode="json")]
    queue = _queue(job)
    if job.batch:
        app.send_task(
            BATCH_TASK, args=args, task_id=f"batch-{job.id}", queue="batch",
            argsrepr=ARGS_REPR, kwargsrepr="{}", producer=producer, priority=job.priority,
        )  # fmt: skip
    elif job.envelope.routing is not None:
        timeout = settings.tier(queue).timeout_s
        app.send_task(
            EXECUTE_TASK,
            args=args,
            task_id=job.id,
            queue=queue,
            time_limit=math.ceil(timeout + 30),
            soft_time_limit=math.ceil(timeout),
            argsrepr=ARGS_REPR,
            kwargsrepr="{}",
            producer=producer,
            priority=job.priority,
        )
    else:
        app.send_task(
            ROUTE_TASK, args=args, task_id=f"route-{job.id}", queue="router",
            argsrepr=ARGS_REPR, kwargsrepr="{}", producer=producer, priority=job.priority,
        )  # fmt: skip


_default: Client | None = None


def default_client() -> Client:
    """The process's client, built from the environment on first use."""
    global _default
    if _default is None:
        _default = Client()
    return _default


def submit(request: Request) -> str:
    """Validate and enqueue a job on the default fleet; return its task id (see :meth:`Client.submit`)."""
    return default_client().submit(request)


def result(task_id: str, timeout: float | None = None, *, until_answered: bool = False) -> TaskResult:
    """Wait for a job's final state on the default fleet (see :meth:`Client.result`)."""
    return default_client().result(task_id, timeout, until_answered=until_answered)
