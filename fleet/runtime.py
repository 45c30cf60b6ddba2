"""What one worker process builds once: its Redis client, the tier chain, the limits, the escalation
store, the job's middlewares and the runner; and how a message becomes a :class:`Job`.

Built on first use in each process (:func:`get_runtime`) and again after a fork: an httpx client, a
Redis connection pool and a thread pool must not cross one.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from fleet import keys, telemetry
from fleet.app import ARGS_REPR, EXECUTE_TASK, NOTIFY_TASK, ROUTE_TASK, FleetCelery, encode_result
from fleet.batch.lane import BatchPump
from fleet.batch.middleware import BatchLane
from fleet.boundary import BoundaryRedis, broker_errors
from fleet.brokers import is_redis
from fleet.callbacks import send_callback
from fleet.chain import Chain
from fleet.discovery import redis_client
from fleet.errors import BrokerError, InvalidRequest, ProviderError, Reason
from fleet.escalations import NewEscalation, RedisEscalationStore
from fleet.fairness import FairShare
from fleet.handoff import Handoff
from fleet.limits import CircuitBreaker, RateLimiter
from fleet.middleware.base import Job, Middleware
from fleet.middleware.callback import Callback
from fleet.middleware.cancel import Cancellation
from fleet.middleware.chaos import ChaosHook
from fleet.middleware.cost import CostRecord
from fleet.middleware.lifecycle import WorkerLifecycle
from fleet.middleware.lock import JobLock, redis_drop
from fleet.middleware.poison import PoisonGuard
from fleet.middleware.queue_limit import QueueRateLimit
from fleet.middleware.start import RedisJobStarter
from fleet.middleware.tail import RedisTail
from fleet.middleware.telemetry import Telemetry
from fleet.models import JobEnvelope, RoutingDecision, TaskRequest, TaskResult, Tier, validate_request
from fleet.pipelines.engine import Pipelines
from fleet.pipelines.middleware import PipelineStep
from fleet.producer import queue_routing
from fleet.providers.batch import BatchAPI, batch_api
from fleet.providers.config import split_links
from fleet.quality.feedback import PassRates, read_rates
from fleet.quality.gate import QualityGate
from fleet.quality.judge import Judge
from fleet.quality.shadow import ShadowRun
from fleet.recovery import Heartbeat, Liveness, Reaper, Recovery, restore_orphan
from fleet.router import Feedback
from fleet.router.llm import VERDICT_SCHEMA
from fleet.runner import JobRunner
from fleet.settings import Settings
from fleet.transport import ack_tag, writes_with_publish

__all__ = ["Runtime", "get_runtime", "reset_runtime"]

log = logging.getLogger(__name__)

#: The span name of each task's run (see fleet.telemetry.spans).
_SPAN_NAMES = {ROUTE_TASK: "route", EXECUTE_TASK: "execute", NOTIFY_TASK: "notify"}


class Runtime:
    """One worker process's machinery, built once."""

    def __init__(self, app: FleetCelery, client: BoundaryRedis | None = None) -> None:
        self.app = app
        self.settings: Settings = app.fleet_settings
        self.client = client or redis_client(self.settings)
        self.chain = Chain(
            self.settings,
            breaker=CircuitBreaker(self.client, self.settings.breaker),
            limiter=RateLimiter(self.client),
        )
        self.store = RedisEscalationStore(self.client, retention_days=self.settings.escalation.retention_days)
        self.handoff = Handoff(self.store, announce=self._announce)
        self.pipelines = Pipelines(self.settings, self.client, app, escalate=self.handoff.escalate)
        self.middlewares: Sequence[Middleware] = self._middlewares()
        self._rates: PassRates | None = None
        self._rates_at = 0.0
        self._rates_lock = threading.Lock()
        limits, quality = self.settings.limits, self.settings.quality
        self.runner = JobRunner(
            self.middlewares, RedisJobStarter(self.client), self.chain, self.handoff.job, limits,
            logprobs=quality.enabled and quality.confidence.logprobs, cancelled=self._cancelled,
        )  # fmt: skip

    def _middlewares(self) -> list[Middleware]:
        """The tier job's middlewares, in the order their hooks run."""
        settings = self.settings
        quality = settings.quality
        judge_links = split_links(quality.judge)
        judge = Judge(
            self.chain, judge_links or settings.tier("standard").links(), timeout_s=quality.judge_timeout_s,
            max_chars=quality.judge_max_chars,
        )  # fmt: skip
        return [
            Telemetry(),
            WorkerLifecycle(),
            Cancellation(),
            JobLock(redis_drop(self.client), Liveness(self.client, settings.recovery.worker_ttl_s).holds),
            PoisonGuard(settings.limits.max_deliveries, self.handoff.job),
            FairShare(settings.fairness, settings.budgets),  # before a slot is waited for
            QueueRateLimit(settings.limits),
            ChaosHook(settings.chaos),
            QualityGate(quality, judge, self.handoff.job, self._polish_links),
            ShadowRun(settings.router.shadow_rate, judge, self._send_shadow),
            CostRecord(settings),
            Recovery(self._heartbeat),
            BatchLane(self._batch_pump),
            PipelineStep(self.pipelines),
            Callback(functools.partial(send_callback, self.app)),
        ]

    def _cancelled(self, task_id: str) -> bool:
        """Whether ``fleet cancel`` marked the job (one read; asked only between a job's calls)."""
        return bool(self.client.hexists(keys.job(task_id), "cancelled"))

    def _heartbeat(self) -> Heartbeat:
        """This worker's heartbeat, with the reaper on Redis (RabbitMQ redelivers by itself)."""
        recovery = self.settings.recovery
        reaper = Reaper(self.client, restore_orphan(self.client), recovery.orphan_after_s)
        return Heartbeat(
            self.client, heartbeat_s=recovery.heartbeat_s, worker_ttl_s=recovery.worker_ttl_s,
            reaper=reaper if self._messages_in_redis else None,
        )  # fmt: skip

    def _polish_links(self, tier: str, exact: bool = False) -> list[tuple[str, str]]:
        own = self.settings.tier(tier).links()
        return own if exact else split_links(self.settings.quality.polish) or own

    def _batch_pump(self) -> BatchPump | None:
        """The batch lane's pump, in a worker that consumes the ``batch`` queue (else None)."""
        if "batch" not in (self.app.amqp.queues.consume_from or ()):
            return None
        return BatchPump(self.client, self.settings, self._batch_api, self.send_on)

    def _batch_api(self, provider: str) -> BatchAPI | None:
        return batch_api(self.chain.provider(provider)) if provider in self.settings.providers else None

    def send_on(
        self, payload: object, envelope: JobEnvelope, *, team: str | None = None, priority: int | None = None,
        task: Any = None,
    ) -> None:  # fmt: skip
        """Send a routed job to its tier's queue (from the router, or the batch lane), its record
        saying so (state ``routed``, the decision's reasons; with ``team``, its fair-share mark) in the
        publish's round trip on Redis, ahead of the message (:func:`fleet.transport.writes_with_publish`).
        ``task``: the Celery task sending it, which then acks its message: the message's unacked record
        goes in that round trip too, after the new message (its ack sends nothing)."""
        routing = envelope.routing
        if routing is None:
            raise ValueError(f"job {envelope.id} has no routing: it cannot go to a tier")
        settings = self.settings

        def record(pipe: Any) -> None:
            ttl = settings.broker.result_expires_s
            queue_routing(pipe, envelope.id, routing, ttl, team=team, fairness=settings.fairness)

        with (
            broker_errors(self.client.fleet_url),
            writes_with_publish(
                self.client,
                record,
                merge=self._messages_in_redis,
                ack_tag=ack_tag(task.request.properties) if task is not None else None,
            ),  # fmt: skip
        ):
            self.app.send_task(
                EXECUTE_TASK, args=[payload, envelope.model_dump(mode="json")], task_id=envelope.id,
                argsrepr=ARGS_REPR, kwargsrepr="{}", priority=priority,
                **self.queue_options(str(routing.tier)),
            )  # fmt: skip

    @functools.cached_property
    def _messages_in_redis(self) -> bool:
        """Whether the messages go through the fleet's Redis (its state's), not RabbitMQ."""
        return is_redis(str(self.app.conf.broker_url or ""))

    def _send_shadow(self, payload: object, envelope: JobEnvelope) -> None:
        with broker_errors(self.client.fleet_url):
            self.app.send_task(
                EXECUTE_TASK, args=[payload, envelope.model_dump(mode="json")], task_id=envelope.id,
                argsrepr="(request, envelope)", kwargsrepr="{}", **self.queue_options("full"),
            )  # fmt: skip

    # -- the worker --------------------------------------------------------------------------------

    def role(self) -> str:
        """The queue this worker consumes (the telemetry resource's role; "worker" when several)."""
        consumed = sorted(self.app.amqp.queues.consume_from or ())
        return consumed[0] if len(consumed) == 1 else "worker"

    def emit(self, hook: str, *args: Any) -> None:
        """Call ``hook`` (a worker lifecycle hook of :class:`Middleware`) on every middleware."""
        for middleware in self.middlewares:
            getattr(middleware, hook)(self, *args)

    def close(self) -> None:
        self.chain.close()

    # -- jobs --------------------------------------------------------------------------------------

    def new_tail(self) -> RedisTail:
        return RedisTail(
            self.client,
            functools.partial(encode_result, self.app),
            grace_s=self.settings.broker.outage_grace_s,
        )

    def _announce(self, escalation_id: str) -> None:
        self.app.send_task(NOTIFY_TASK, args=[escalation_id], queue="escalations")

    def validate(self, task: Any, request: Any, job: Any) -> tuple[TaskRequest, JobEnvelope] | TaskResult:
        """The request and envelope of a message, or the escalated result of one that does not validate
        (a message can come from anywhere: reason ``invalid_message``, never an exception)."""
        # Every task starts here: name its consumer span (run/<task>, fleet.telemetry.consumer).
        span_name = _SPAN_NAMES.get(task.name, task.name)
        telemetry.task_span(span_name, {"fleet.task_id": task.request.id})
        queue = (task.request.delivery_info or {}).get("routing_key")
        try:
            envelope = JobEnvelope.model_validate(job)
            req = validate_request(request, max_prompt_bytes=self.settings.limits.max_prompt_bytes)
        except (ValidationError, InvalidRequest) as exc:
            detail = "; ".join(exc.errors) if isinstance(exc, InvalidRequest) else str(exc).splitlines()[0]
            return self.handoff.escalate(
                NewEscalation(
                    task_id=str(task.request.id),
                    reason=Reason.INVALID_MESSAGE,
                    detail=f"{task.name}: {detail}",
                    request=request if isinstance(request, dict | str) else repr(request)[:2000],
                    tier=Tier.of(queue),
                    queue=queue,
                    retry_of=job.get("retry_of") if isinstance(job, dict) else None,
                )
            )
        if envelope.routing is not None:  # every delivery's span says where the job runs
            telemetry.set_routing(telemetry.task_span(span_name), envelope.routing)
        return req, envelope

    def accept(self, task: Any, request: Any, job: Any) -> Job | TaskResult:
        """A tier job's delivery as a :class:`Job`, or the escalated result of an invalid message."""
        checked = self.validate(task, request, job)
        if isinstance(checked, TaskResult):
            return checked
        req, envelope = checked
        info = task.request.delivery_info or {}
        queue = info.get("routing_key")
        routing = envelope.routing or RoutingDecision(
            tier=Tier.of(queue) or Tier.STANDARD,
            reasons=[f"no routing decision on the message: ran on queue {queue}"],
            classifier="queue",
        )
        return Job(
            request=req,
            payload=request,
            envelope=envelope,
            routing=routing,
            queue=self.settings.tier(routing.tier),
            consumed_from=queue,
            redelivered=bool(info.get("redelivered")),
            retries=int(task.request.retries or 0),
            tail=self.new_tail(),
            ack_tag=ack_tag(task.request.properties),
        )

    def queue_options(self, tier: str | None) -> dict[str, Any]:
        """Celery's sending options for a job going to tier ``tier`` (none: back to its own queue)."""
        if tier is None:
            return {}
        timeout = self.settings.tier(tier).timeout_s
        return {"queue": tier, "time_limit": math.ceil(timeout + 30), "soft_time_limit": math.ceil(timeout)}

    def feedback(self) -> Feedback | None:
        """The quality gate's pass rates as the router reads them: read again at most every
        ``quality.feedback.refresh_s`` (one round trip), so routing a job costs none. None when off."""
        quality = self.settings.quality
        cfg = quality.feedback
        if not (quality.enabled and cfg.enabled):
            return None
        with self._rates_lock:
            if self._rates is None or time.monotonic() - self._rates_at >= cfg.refresh_s:
                self._rates_at = time.monotonic()
                try:
                    self._rates = read_rates(self.client, cfg.window_s)
                except BrokerError as exc:  # routing goes on with the last rates (or none)
                    log.warning("could not read the quality pass rates: %s", exc)
            rates = self._rates
        if rates is None:
            return None
        return lambda tier, kind: rates.move_up(str(tier), kind, cfg)

    def ask_mini(self, prompt: str, timeout_s: float) -> str:
        """The LLM classifier's model call: the mini tier's chain, bounded by ``timeout_s``.

        Raises:
            ProviderError: no link answered in time.
        """
        request = TaskRequest(prompt=prompt, max_tokens=200, temperature=0.0, response_schema=VERDICT_SCHEMA)
        outcome = self.chain.run(self.settings.tier("mini").links(), request, timeout_s=timeout_s)
        if outcome.answer is None:
            raise ProviderError(f"the mini tier gave no verdict ({outcome.reason})")
        return outcome.answer


_runtime: Runtime | None = None
_runtime_pid = -1
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """This process's runtime, built on first use (and again in a new process after a fork)."""
    global _runtime, _runtime_pid
    if _runtime is None or _runtime_pid != os.getpid():
        with _runtime_lock:
            if _runtime is None or _runtime_pid != os.getpid():
                from fleet.app import app

                _runtime, _runtime_pid = Runtime(app), os.getpid()
    return _runtime


def reset_runtime() -> None:
    """Forget this process's runtime (after a fork: its clients must not be shared)."""
    global _runtime
    _runtime = None
