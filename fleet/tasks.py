"""Thin Celery tasks: route, execute, escalate. The logic lives in router/, chain.py, escalations.py.

A message can come from anywhere, so each task validates what it receives; a message that does not
validate is a dead letter (reason ``invalid_message``), never an exception that kills the worker.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Task
from celery.signals import worker_process_init, worker_process_shutdown
from pydantic import ValidationError

from fleet.app import ESCALATE_TASK, EXECUTE_TASK, ROUTE_TASK, app
from fleet.chain import Chain
from fleet.discovery import redis_client
from fleet.errors import InvalidRequest, ProviderError
from fleet.escalations import EscalationStore, NewEscalation
from fleet.models import (
    Attempt,
    JobEnvelope,
    RoutingDecision,
    TaskRequest,
    TaskResult,
    Tier,
    validate_request,
)
from fleet.router import decide
from fleet.settings import Settings

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
                _chain = Chain(_settings())
    return _chain


@worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    global _chain
    _chain = None  # an httpx client must not cross a fork


@worker_process_shutdown.connect
def _close_chain(**_: Any) -> None:
    if _chain is not None:
        _chain.close()


def _tier_or_none(value: object) -> Tier | None:
    try:
        return Tier(str(value))
    except ValueError:
        return None


def _store() -> EscalationStore:
    return EscalationStore(redis_client(_settings()))


def dead_letter(new: NewEscalation) -> TaskResult:
    """Persist an escalation (before the message is acked), notify the escalations queue, and
    return the task's final result."""
    record, created = _store().create(new)
    if created:
        app.send_task(ESCALATE_TASK, args=[record["id"]], queue="escalations")
    log.warning("task %s escalated: %s %s", new.task_id, new.reason, new.detail[:200])
    return TaskResult(
        task_id=new.task_id,
        status="escalated",
        tier=_tier_or_none(new.tier),
        routing=RoutingDecision.model_validate(new.routing) if new.routing else None,
        attempts=[Attempt.model_validate(a) for a in new.attempts or []],
        cost_usd=sum(float(a.get("cost_usd", 0.0)) for a in new.attempts or []),
        escalation_id=record["id"],
        reason=record["reason"],
        submitted_at=new.submitted_at,
        finished_at=time.time(),
    )


def _ask_mini_tier(prompt: str, timeout_s: float) -> str:
    """The LLM classifier's model call: the mini tier's chain, bounded by ``timeout_s``.

    Raises:
        ProviderError: no link answered in time.
    """
    outcome = _get_chain().run(
        _settings().tier("mini").links(), TaskRequest(prompt=prompt, max_tokens=200), timeout_s=timeout_s
    )
    if outcome.answer is None:
        raise ProviderError(f"the mini tier gave no verdict ({outcome.reason})")
    return outcome.answer


def _validate(task: Task, request: Any, job: Any) -> tuple[TaskRequest, JobEnvelope] | TaskResult:
    """The request and envelope, or the dead-letter result of a message that does not validate."""
    settings = _settings()
    queue = (task.request.delivery_info or {}).get("routing_key")
    try:
        envelope = JobEnvelope.model_validate(job)
        req = validate_request(request, max_prompt_bytes=settings.limits.max_prompt_bytes)
    except (ValidationError, InvalidRequest) as exc:
        detail = "; ".join(exc.errors) if isinstance(exc, InvalidRequest) else str(exc).splitlines()[0]
        return dead_letter(
            NewEscalation(
                task_id=task.request.id,
                reason="invalid_message",
                detail=f"{task.name}: {detail}",
                request=request if isinstance(request, dict | str) else repr(request)[:2000],
                tier=str(_tier_or_none(queue)) if _tier_or_none(queue) else None,
                queue=queue,
            )
        )
    return req, envelope


@app.task(name=ROUTE_TASK, bind=True, ignore_result=True)
def route(self: Task, request: Any = None, job: Any = None) -> None:
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
    tier = settings.tier(envelope.routing.tier)
    app.send_task(
        EXECUTE_TASK,
        args=[request, envelope.model_dump(mode="json")],
        task_id=envelope.id,
        queue=str(envelope.routing.tier),
        time_limit=tier.timeout_s + 30,
        soft_time_limit=tier.timeout_s,
    )


@app.task(name=EXECUTE_TASK, bind=True)
def execute(self: Task, request: Any = None, job: Any = None) -> dict[str, Any]:
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
    outcome = _get_chain().run(tier_settings.links(), req, timeout_s=tier_settings.timeout_s)
    attempts = [*envelope.attempts, *outcome.attempts]
    if not outcome.ok:
        return dead_letter(
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
        ).model_dump(mode="json")
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
    return result.model_dump(mode="json")


@app.task(name=ESCALATE_TASK, bind=True, ignore_result=True)
def escalate(self: Task, escalation_id: Any = None) -> None:
    """Tell people about a new escalation (the record itself is already stored)."""
    record = _store().get_or_none(str(escalation_id))
    if record is None:
        log.error("escalation %r announced but not found", escalation_id)
        return
    log.info(
        "escalation %s open: task %s, tier %s, reason %s", record["id"], record["task_id"], record["tier"],
        record["reason"],
    )  # fmt: skip
