"""Thin Celery tasks: route, execute, escalate. The logic lives in router/, chain.py, escalations.py.

A message can come from anywhere, so each task validates what it receives; a message that does not
validate is a dead letter (reason ``invalid_message``), never an exception that kills the worker.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, Reject
from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_ready
from pydantic import ValidationError

from fleet import costs, keys, telemetry
from fleet.app import (
    ARGS_REPR,
    ESCALATE_TASK,
    EXECUTE_TASK,
    RESULT_REPR_MAX,
    ROUTE_TASK,
    app,
    queue_result,
)
from fleet.boundary import BROKER_ERRORS
from fleet.chain import THROTTLED, Chain
from fleet.discovery import redis_client
from fleet.errors import InvalidRequest
from fleet.escalations import EscalationStore, NewEscalation, RedisEscalationStore
from fleet.limits import (
    GATE_LUA,
    GCRA_LUA,
    Bucket,
    CircuitBreaker,
    Gate,
    GateAnswer,
    RateLimiter,
    acquire_args,
)
from fleet.models import (
    Attempt,
    JobEnvelope,
    RoutingDecision,
    TaskRequest,
    TaskResult,
    Tier,
    validate_request,
)
from fleet.notify import backoff_s, post_webhook, slack_message
from fleet.router import decide
from fleet.router.llm import chain_ask
from fleet.settings import QueueSettings, Settings, parse_rate

__all__ = ["dead_letter", "escalate", "execute", "route"]

log = logging.getLogger(__name__)

_chain: Chain | None = None
_chain_lock = threading.Lock()


def _settings() -> Settings:
    settings: Settings = app.fleet_settings
    return settings


def _get_chain() -> Chain:
    """One chain (one httpx client) per worker process, built on first use."""
    global _chain
    if _chain is None:
        with _chain_lock:
            if _chain is None:
                settings = _settings()
                client = redis_client(settings)
                _chain = Chain(
                    settings,
                    breaker=CircuitBreaker(client, settings.breaker),
                    limiter=RateLimiter(client),
                )
    return _chain


@worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    global _chain
    _chain = None  # an httpx client must not cross a fork
    _freeze_startup_objects()


@worker_ready.connect
def _freeze_in_main_process(**_: Any) -> None:
    # The consumer (and a threads pool's tasks) run here; a prefork pool's children freeze their own.
    _freeze_startup_objects()


def _freeze_startup_objects() -> None:
    """Keep what start-up allocated (Celery, kombu, pydantic, OTel: most of a worker's heap) out of
    the garbage collector's scans: a full collection over it stalled every job in flight for tens of
    milliseconds, a few times a minute at load (docs/performance.md)."""
    gc.collect()
    gc.freeze()


def _worker_role() -> str:
    """The queue this worker consumes (the telemetry resource's role; "worker" when several)."""
    consumed = sorted(app.amqp.queues.consume_from or ())
    return consumed[0] if len(consumed) == 1 else "worker"


@worker_init.connect
def _telemetry_in_worker(sender: Any = None, **_: Any) -> None:
    # Threads and solo pools run tasks in this process; a prefork pool's children set up after the fork.
    settings = _settings()
    if telemetry.on_worker_init(sender, settings, _worker_role()) and _worker_role() == "escalations":
        from fleet.monitor import queue_snapshot

        client = redis_client(settings)
        telemetry.register_queue_gauges(lambda: queue_snapshot(settings, client))


@worker_process_init.connect
def _telemetry_after_fork(**_: Any) -> None:
    telemetry.on_worker_process_init(_settings(), _worker_role())


@worker_process_shutdown.connect
def _flush_telemetry(**_: Any) -> None:
    telemetry.shutdown()  # a prefork child leaves through os._exit: no atexit flush


@worker_process_shutdown.connect
def _close_chain(**_: Any) -> None:
    if _chain is not None:
        _chain.close()


def _tier_or_none(value: object) -> Tier | None:
    try:
        return Tier(str(value))
    except ValueError:
        return None


def _get_limiter() -> RateLimiter:
    limiter = _get_chain().limiter
    assert limiter is not None  # built with the chain
    return limiter


def _store() -> EscalationStore:
    settings = _settings()
    return RedisEscalationStore(redis_client(settings), retention_days=settings.escalation.retention_days)


def _retry_of_current_job() -> str | None:
    """``retry_of`` from the running task's envelope: set when people retried this job."""
    task = app.current_task
    args: Any = getattr(getattr(task, "request", None), "args", None) or ()
    job = args[1] if len(args) > 1 else None
    retry_of = job.get("retry_of") if isinstance(job, dict) else None
    return retry_of if isinstance(retry_of, str) else None


def dead_letter(new: NewEscalation) -> TaskResult:
    """Persist an escalation (before the message is acked), notify the escalations queue, and
    return the task's final result."""
    if new.retry_of is None:
        new = new.model_copy(update={"retry_of": _retry_of_current_job()})
    if new.trace_id is None:
        new = new.model_copy(update={"trace_id": telemetry.current_traceparent()})
    record, created = _store().create(new)
    if created:
        telemetry.record_escalation(new.reason, new.tier)
        app.send_task(ESCALATE_TASK, args=[record.id], queue="escalations")
    log.warning("task %s escalated: %s %s", new.task_id, new.reason, new.detail[:200])
    return TaskResult(
        task_id=new.task_id,
        status="escalated",
        tier=_tier_or_none(new.tier),
        routing=RoutingDecision.model_validate(new.routing) if new.routing else None,
        attempts=[Attempt.model_validate(a) for a in new.attempts or []],
        cost_usd=sum(a.cost_usd for a in new.attempts),
        escalation_id=record.id,
        reason=record.reason,
        submitted_at=new.submitted_at,
        finished_at=time.time(),
    )


#: Times a job may go back to its queue for rate limits before it is escalated as "throttled".
MAX_REQUEUES = 50


def _count_redelivery(
    task: Task[Any, Any], request: Any, envelope: JobEnvelope, routing: RoutingDecision
) -> TaskResult | None:
    """Count broker redeliveries of this job; past ``limits.max_deliveries`` it is a poison message.

    Redis only says "redelivered", not how often (SQS's maxReceiveCount is the model), so the
    count lives in Redis; a job that kills its worker every time stops here instead of looping.
    """
    if not (task.request.delivery_info or {}).get("redelivered"):
        return None
    client = redis_client(_settings())
    key = keys.deliveries(envelope.id)
    pipe = client.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 7 * 24 * 3600)
    count = int(pipe.execute()[0]) + 1
    if count <= _settings().limits.max_deliveries:
        return None
    return dead_letter(
        NewEscalation(
            task_id=envelope.id,
            reason="poison_message",
            detail=f"delivered {count} times without finishing (the worker died or was killed each time)",
            tier=str(routing.tier),
            queue=(task.request.delivery_info or {}).get("routing_key"),
            request=request,
            routing=routing.model_dump(mode="json"),
            attempts=[a.model_dump(mode="json") for a in envelope.attempts],
            submitted_at=envelope.submitted_at,
        )
    )


# The job's start, in one round trip: its lock, its queue's token and its first link's admission.
# KEYS: the job's lock, its result key, the queue's rate counter, the queue's buckets (nq of them),
# then, with a link gate, Gate.keys() (the link's counter, its breaker, its buckets).
# ARGV: [1] owner, [2] ttl_ms, [3] take_token ("1": take the queue's token now), [4] nq, [5] "1": ask
# the link gate too, [6] the queue wait (ms) within which the link is asked now, [7] the queue's
# acquire arguments (max_wait_ms, then a triple per bucket), then Gate.args().
# Returns {-2}: the job already has a final result (a late redelivery); {holder's remaining ms}: locked
# by another; {-1, reserved 0|1, wait_ms}: locked for us with the queue token's answer, followed by
# the link gate's {reserved, wait_ms, allowed, state} when it was asked (the queue token is due within
# the slot wait: a job that goes back to its queue reserves no link token).
_LOCK = (
    GCRA_LUA
    + GATE_LUA
    + """
local stored = redis.call('GET', KEYS[2])
if stored then
  local ok, meta = pcall(cjson.decode, stored)
  if ok and meta['status'] == 'SUCCESS' then return {-2} end
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {redis.call('PTTL', KEYS[1])} end
if ARGV[3] ~= '1' then return {-1, 1, '0'} end
local nq = tonumber(ARGV[4])
local queue = {}
for i = 1, nq do queue[i] = KEYS[3 + i] end
local reserved, wait = acquire(queue, KEYS[3], ARGV, 7, tonumber(ARGV[7]))
if ARGV[5] ~= '1' or reserved == 0 or wait > tonumber(ARGV[6]) then return {-1, reserved, tostring(wait)} end
local k = 4 + nq
local link = {}
for i = k + 2, #KEYS do link[#link + 1] = KEYS[i] end
local r, w, allowed, state = gate(link, KEYS[k], KEYS[k + 1], ARGV, 8 + 3 * nq)
return {-1, reserved, tostring(wait), r, tostring(w), allowed, state}
"""
)
_lock_script: Any = None
#: Jobs this process is running (it holds their locks), and locks it failed to release because
#: the broker was down: released before the next job, so a redelivery is not held back by them.
_held: set[str] = set()
_unreleased: set[str] = set()
_DROP_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
#: Longest a copy of a running job waits before it looks at the lock again.
_LOCK_RECHECK_S = 10.0


def _lock(
    task_id: str, timeout_s: float, queue: QueueSettings | None = None, gate: Gate | None = None
) -> tuple[float | None, tuple[bool, float] | None, GateAnswer | None]:
    """Take the job's execution lock and, given ``queue``, its queue token, and given ``gate`` too,
    the first link's admission when the queue token is due at once (one round trip).

    Returns ``(lock_wait, token, link)``: ``lock_wait`` is None when the lock is taken, else
    seconds until the holder's lock lapses; ``token`` is :func:`_queue_token`'s raw
    ``(reserved, wait_s)`` when ``queue`` was given and the lock taken, else None; ``link`` is the
    gate's answer when it was asked, for ``Chain.run(first=...)``.

    Raises:
        Ignore: the job already has its final result (a redelivery that came too late): the
            message is acked and nothing runs twice.
    """
    global _lock_script
    client = redis_client(_settings())
    for stale in [t for t in _unreleased if t not in _held]:
        client.eval(_DROP_IF_OWNER, 1, keys.running(stale), _owner())
        _unreleased.discard(stale)
    if _lock_script is None:
        _lock_script = client.register_script(_LOCK)
    result_key = keys.result(task_id)
    ttl_ms = int((timeout_s + 30) * 1000)
    limits = _settings().limits
    buckets = _queue_buckets(queue) if queue is not None else []
    counter = keys.rate_counter(queue.name if queue else "none", int(time.time()) // 10)
    script_keys = [keys.running(task_id), result_key, counter, *(b.key for b in buckets)]
    args: list[Any] = [
        _owner(), ttl_ms, "1" if queue is not None else "0", len(buckets), "1" if gate is not None else "0",
        limits.max_slot_wait_s * 1000.0, *acquire_args(buckets, limits.max_reserve_s),
    ]  # fmt: skip
    if gate is not None:
        script_keys += gate.keys()
        args += gate.args()
    answer = _lock_script(keys=script_keys, args=args, client=client)
    left = int(answer[0])
    if left == -2:
        log.warning("task %s already has its result: redelivered copy dropped", task_id)
        raise Ignore()
    if left == -1:
        _held.add(task_id)
        token = (bool(int(answer[1])), max(0.0, float(answer[2]) / 1000.0)) if queue is not None else None
        link = gate.answer(*answer[3:7]) if gate is not None and len(answer) > 3 else None
        return None, token, link
    if _holder_died(client, keys.running(task_id), task_id):
        return _lock(task_id, timeout_s, queue, gate)  # the dead holder's lock is gone: take it now
    return max(0.5, min(left / 1000.0, _LOCK_RECHECK_S)), None, None


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _holder_died(client: Any, key: str, task_id: str) -> bool:
    """Drop a lock whose holder was a process on this machine that no longer exists (or this
    process, which no longer runs the job: its release failed while the broker was down).

    A worker killed mid-job (SIGKILL, OOM) leaves its lock behind; without this its redelivery
    would wait out the lock's whole TTL (the queue timeout + 30 s) before running.
    """
    raw = client.get(key)
    host, _, pid = (raw or b"").decode(errors="replace").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's worker (or none): wait for its lock to lapse
    if int(pid) == os.getpid():
        if task_id in _held:
            return False
    else:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            pass
        except OSError:
            return False
        else:
            stat = Path(f"/proc/{pid}/stat")
            if not stat.exists() or ") Z" not in stat.read_text(errors="replace"):
                return False  # alive (a zombie, killed but not yet reaped, counts as dead)
    return bool(client.eval(_DROP_IF_OWNER, 1, key, raw))


def _unlock(task_id: str, pipe: Any, result_at: int | None) -> bool:
    """Release the job's lock together with the writes queued on ``pipe`` (one round trip).

    ``result_at`` is the index on ``pipe`` of the result's write (see :func:`fleet.app.queue_result`).
    Returns whether that write went through (False without one): if not, Celery stores the result
    itself, with its own retries.
    """
    _held.discard(task_id)
    try:
        pipe.delete(keys.running(task_id))
        answers = pipe.execute(raise_on_error=False)
    except BROKER_ERRORS:
        _unreleased.add(task_id)  # the broker is down: release it before the next job
        log.warning("task %s: could not release its lock (broker down); will retry", task_id)
        return False
    # A cost line or a tpm correction that failed is logged; the job goes on.
    for i, answer in enumerate(answers):
        if isinstance(answer, Exception):
            what = "result" if i == result_at else "last write (cost line or tpm correction)"
            log.warning("task %s: its %s failed: %s", task_id, what, answer)
    return result_at is not None and not isinstance(answers[result_at], Exception)


def _queue_buckets(queue: QueueSettings) -> list[Bucket]:
    if not queue.rate_limit:
        return []
    rate = parse_rate(queue.rate_limit)
    return [Bucket(keys.bucket("queue", queue.name), rate, burst=max(1.0, rate))]


def _queue_token(queue: QueueSettings, taken: tuple[bool, float] | None = None) -> tuple[bool, float]:
    """Reserve the job's slot under the queue's fleet-wide rate limit, and count the start.

    Returns ``(reserved, wait_s)``. A reservation within ``limits.max_slot_wait_s`` is waited for
    here; a later one is kept and the job goes back to its queue until then, so each job is
    requeued at most once and the queue runs at exactly its rate. Beyond ``limits.max_reserve_s``
    nothing is reserved (a far reservation would outlive the broker's visibility timeout).
    ``taken`` is the reservation's raw answer when :func:`_lock` already asked for it.
    """
    limits = _settings().limits
    if taken is None:
        taken = _get_limiter().acquire(
            _queue_buckets(queue),
            max_wait_s=limits.max_reserve_s,
            counter=keys.rate_counter(queue.name, int(time.time()) // 10),
        )
    reserved, wait = taken
    if reserved and wait <= limits.max_slot_wait_s:
        if wait > 0:
            time.sleep(wait)
        return True, 0.0
    return reserved, wait if reserved else limits.max_reserve_s * random.uniform(0.5, 1.0)


def _requeue(task: Task[Any, Any], request: Any, envelope: JobEnvelope, countdown: float) -> NoReturn:
    """Send the job back to its queue to run in ``countdown`` seconds, with its id and history."""
    envelope.requeues += 1
    telemetry.record_requeue((task.request.delivery_info or {}).get("routing_key"), "wait")
    telemetry.task_span("execute", {"fleet.requeue.countdown_s": round(countdown, 3)})
    raise task.retry(
        args=(request, envelope.model_dump(mode="json")),
        kwargs={},
        countdown=round(countdown, 3),
        max_retries=None,
    )


def _ask_mini_tier(prompt: str, timeout_s: float) -> str:
    """The LLM classifier's model call: the mini tier's chain, bounded by ``timeout_s``.

    Raises:
        ProviderError: no link answered in time.
    """
    return chain_ask(_get_chain(), _settings().tier("mini").links())(prompt, timeout_s)


#: The span name of each task's run (see fleet.telemetry.spans).
_SPAN_NAMES = {ROUTE_TASK: "route", EXECUTE_TASK: "execute", ESCALATE_TASK: "escalate"}


def _validate(task: Task[Any, Any], request: Any, job: Any) -> tuple[TaskRequest, JobEnvelope] | TaskResult:
    """The request and envelope, or the dead-letter result of a message that does not validate."""
    # Every task starts here: name its consumer span (the Celery instrumentation's run/<task>).
    telemetry.task_span(_SPAN_NAMES.get(task.name, task.name), {"fleet.task_id": task.request.id})
    settings = _settings()
    queue = (task.request.delivery_info or {}).get("routing_key")
    try:
        envelope = JobEnvelope.model_validate(job)
        req = validate_request(request, max_prompt_bytes=settings.limits.max_prompt_bytes)
    except (ValidationError, InvalidRequest) as exc:
        detail = "; ".join(exc.errors) if isinstance(exc, InvalidRequest) else str(exc).splitlines()[0]
        return dead_letter(
            NewEscalation(
                task_id=str(task.request.id),
                reason="invalid_message",
                detail=f"{task.name}: {detail}",
                request=request if isinstance(request, dict | str) else repr(request)[:2000],
                tier=str(_tier_or_none(queue)) if _tier_or_none(queue) else None,
                queue=queue,
            )
        )
    if envelope.routing is not None:  # every delivery's span says where the job runs
        telemetry.set_routing(telemetry.task_span(_SPAN_NAMES.get(task.name, task.name)), envelope.routing)
    return req, envelope


class _BrokerSafeTask(Task[Any, Any]):
    """A broker that drops out mid-job is not the job's failure: Celery would store FAILURE and ack
    it (a job lost). Reject with requeue instead; if the broker is still down the message stays
    unacked and comes back after the visibility timeout."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except BROKER_ERRORS as exc:
            log.warning("task %s: the broker is unavailable (%s): requeued", self.request.id, exc)
            raise Reject(f"broker unavailable: {exc}", requeue=True) from exc


@app.task(name=ROUTE_TASK, bind=True, ignore_result=True, base=_BrokerSafeTask)
def route(self: Task[Any, Any], request: Any = None, job: Any = None) -> None:
    """Classify a job and enqueue it on its tier's queue, keeping its id."""
    checked = _validate(self, request, job)
    if isinstance(checked, TaskResult):
        # The router stores no results; the dead letter's result goes under the job's id.
        app.backend.store_result(checked.task_id, checked.model_dump(mode="json"), "SUCCESS")
        return
    req, envelope = checked
    settings = _settings()
    ask = _ask_mini_tier if settings.router.classifier == "llm" else None
    envelope.routing = decide(req, settings.router, ask=ask)
    span = telemetry.task_span("route", {"fleet.task_id": envelope.id, "fleet.kind": req.kind})
    telemetry.set_routing(span, envelope.routing)
    tier = settings.tier(envelope.routing.tier)
    app.send_task(
        EXECUTE_TASK,
        args=[request, envelope.model_dump(mode="json")],
        task_id=envelope.id,
        queue=str(envelope.routing.tier),
        time_limit=math.ceil(tier.timeout_s + 30),
        soft_time_limit=math.ceil(tier.timeout_s),
        argsrepr=ARGS_REPR,
        kwargsrepr="{}",
    )


#: What execute hands back to Celery once it stored the result itself (Flower shows it).
_SUMMARY = ("task_id", "status", "tier", "model", "cost_usd", "escalation_id")


# Requeues are bounded by MAX_REQUEUES. A short repr of the result: Celery builds it for every task
# (events, the "succeeded" log line), and an answer can be long.
@app.task(
    name=EXECUTE_TASK, bind=True, max_retries=None, resultrepr_maxsize=RESULT_REPR_MAX, base=_BrokerSafeTask
)
def execute(self: Task[Any, Any], request: Any = None, job: Any = None) -> dict[str, Any]:
    """Run the tier's chain; return the TaskResult, or escalate when no link could answer."""
    checked = _validate(self, request, job)
    if isinstance(checked, TaskResult):
        return checked.model_dump(mode="json")
    req, envelope = checked
    settings = _settings()
    queue = (self.request.delivery_info or {}).get("routing_key")
    routing = envelope.routing or RoutingDecision(
        tier=_tier_or_none(queue) or Tier.STANDARD,
        reasons=[f"no routing decision on the message: ran on queue {queue}"],
        classifier="queue",
    )
    tier_settings = settings.tier(routing.tier)
    # The lock first: a late copy of a finished job is dropped and a copy of a running one waits,
    # so neither counts as a delivery (nor can it turn a finished job into a poison message).
    # A first delivery takes its queue token and its first link's admission with the lock (one round
    # trip); a redelivery takes them only once it is known not to be a poison message.
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    with_token = not envelope.slot_reserved and not redelivered
    gate = _get_chain().first_gate(tier_settings.links(), req) if with_token else None
    lock_wait, token, link = _lock(
        envelope.id, tier_settings.timeout_s, tier_settings if with_token else None, gate
    )
    if lock_wait is not None:
        # Another worker is running this job (a redelivery after the visibility timeout, say):
        # come back when its lock lapses rather than run it twice at once, and never drop it.
        _requeue(self, request, envelope, lock_wait)
    # The job's last writes (tpm corrections, its cost line, its result) go out with the lock's
    # release, in one round trip.
    tail = redis_client(settings).pipeline(transaction=False)
    result_at: int | None = None
    try:
        poisoned = _count_redelivery(self, request, envelope, routing)
        if poisoned is not None:
            result = poisoned.model_dump(mode="json")
        else:
            marker = settings.chaos.crash_marker
            if marker and marker in req.prompt:
                log.critical("chaos: crash marker in task %s: exiting this worker process", envelope.id)
                os._exit(70)
            result = _run_tier(
                self, request, req, envelope, routing, queue, tier_settings, (token, link), tail
            )
        result_at = len(tail)
        queue_result(app, tail, envelope.id, result)
    finally:
        written = _unlock(envelope.id, tail, result_at)
    if not written:
        return result  # Celery stores it, with its own retries
    # Stored above, before the lock's release: Celery would GET the key, then SET it again. What
    # Celery gets back is only for its events and log line: a summary, not the whole result (which
    # it would repr and pickle back to the pool's parent for nothing).
    self.request.ignore_result = True
    return {key: result.get(key) for key in _SUMMARY}


def _run_tier(
    task: Task[Any, Any],
    request: Any,
    req: TaskRequest,
    envelope: JobEnvelope,
    routing: RoutingDecision,
    queue: str | None,
    tier_settings: QueueSettings,
    taken: tuple[tuple[bool, float] | None, GateAnswer | None],
    tail: Any,
) -> dict[str, Any]:
    """The tier's part of a job: its queue's rate limit, its chain, then a result or an escalation.

    ``taken`` is what :func:`_lock` asked: the queue token and the first link's admission;
    ``tail`` the pipeline of the job's last writes.
    """
    token, first = taken
    if envelope.slot_reserved:
        envelope.slot_reserved = False  # this delivery is the reserved one
    else:
        reserved, wait = _queue_token(tier_settings, token)
        if wait > 0:
            envelope.slot_reserved = reserved
            _requeue(task, request, envelope, wait)
        if first is not None and token is not None and token[1] > 0:
            # Both waits ran from the same instant, and the queue's was just slept.
            first = dataclasses.replace(first, wait_s=max(0.0, first.wait_s - token[1]))
    chain = _get_chain()
    span = telemetry.task_span("execute", {"fleet.task_id": envelope.id, "fleet.kind": req.kind})
    telemetry.set_routing(span, routing)
    corrections: list[tuple[Bucket, float]] = []
    try:
        links = tier_settings.links()
        timeout_s = tier_settings.timeout_s
        outcome = chain.run(links, req, timeout_s=timeout_s, corrections=corrections, first=first)
    finally:
        for bucket, delta in corrections:
            _get_limiter().adjust(bucket, delta, pipe=tail)
    attempts = [*envelope.attempts, *outcome.attempts]
    if outcome.reason == THROTTLED and envelope.requeues < MAX_REQUEUES:
        envelope.attempts = attempts
        _requeue(task, request, envelope, outcome.retry_after or 1.0)
    if not outcome.ok:
        return _finished(dead_letter(
            NewEscalation(
                task_id=envelope.id,
                reason=outcome.reason or "chain_exhausted",
                detail=f"no link of the {routing.tier} chain gave an acceptable answer",
                tier=str(routing.tier),
                queue=queue,
                request=request,
                routing=routing.model_dump(mode="json"),
                attempts=[a.model_dump(mode="json") for a in attempts],
                submitted_at=envelope.submitted_at,
            )
        ), req, envelope, outcome.attempts, tail)  # fmt: skip
    result = TaskResult(
        task_id=envelope.id,
        status="completed",
        answer=outcome.answer,
        tier=routing.tier,
        provider=outcome.provider,
        model=outcome.model,
        kind=req.kind,
        routing=routing,
        attempts=attempts,
        input_tokens=sum(a.input_tokens for a in attempts),
        output_tokens=sum(a.output_tokens for a in attempts),
        cost_usd=round(sum(a.cost_usd for a in attempts), 8),
        fallback_index=outcome.link_index,
        resolved_by="model",
        submitted_at=envelope.submitted_at,
        finished_at=time.time(),
    )
    return _finished(result, req, envelope, outcome.attempts, tail)


def _finished(
    result: TaskResult, req: TaskRequest, envelope: JobEnvelope, new_attempts: list[Attempt], tail: Any
) -> dict[str, Any]:
    """A job's final state on its execute span, in the metrics and in the cost records (queued on
    ``tail``, sent with the lock's release).

    A job people retried carries the attempts of its first run, which its escalation already
    charged: only this run's calls are charged again.
    """
    result = result.model_copy(update={"kind": req.kind})
    charged = new_attempts if envelope.retry_of else result.attempts
    span = telemetry.task_span("execute")
    if span.is_recording():
        span.set_attributes({
            "fleet.outcome": result.status,
            "fleet.cost_usd": result.cost_usd,
            "gen_ai.usage.input_tokens": result.input_tokens,
            "gen_ai.usage.output_tokens": result.output_tokens,
            "fleet.attempts": len(result.attempts),
        })  # fmt: skip
        if result.fallback_index is not None:
            span.set_attribute("fleet.fallback.index", result.fallback_index)
        if result.model:
            span.set_attribute("gen_ai.response.model", result.model)
    telemetry.record_job(result, charged)
    costs.record_job(tail, _settings(), result, charged)
    return result.model_dump(mode="json")


@app.task(name=ESCALATE_TASK, bind=True, ignore_result=True)
def escalate(self: Task[Any, Any], escalation_id: Any = None) -> None:
    """Tell people about a new escalation (the record itself is already stored).

    Posts to ``escalation.webhook_url`` when set, retrying with capped backoff; on success marks the
    record ``notified_at``. A webhook that keeps failing is logged and given up on: the record stays.
    """
    telemetry.task_span("escalate", {"fleet.escalation.id": str(escalation_id)})
    settings = _settings()
    store = _store()
    record = store.get_or_none(str(escalation_id))
    if record is None:
        log.error("escalation %r announced but not found", escalation_id)
        return
    log.info(
        "escalation %s open: task %s, tier %s, reason %s", record.id, record.task_id, record.tier,
        record.reason,
    )  # fmt: skip
    cfg = settings.escalation
    if not cfg.webhook_url or record.notified_at is not None or record.state not in ("open", "claimed"):
        return
    failure = post_webhook(cfg.webhook_url, slack_message(record, cfg), timeout_s=cfg.webhook_timeout_s)
    if failure is None:
        store.mark_notified(record.id)
        return
    retries = int(self.request.retries or 0)
    if retries >= cfg.webhook_max_retries:
        log.error("escalation %s: webhook failed %d times, giving up: %s", record.id, retries + 1, failure)
        return
    delay = backoff_s(retries, cfg)
    log.warning("escalation %s: webhook failed (%s); retry in %.1f s", record.id, failure, delay)
    raise self.retry(countdown=delay, max_retries=cfg.webhook_max_retries)
