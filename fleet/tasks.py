"""Thin Celery tasks: route, execute, notify. The machinery lives in the runtime and its middlewares.

A message can come from anywhere, so each task validates what it receives; a message that does not
validate is handed to people (reason ``invalid_message``), never an exception that kills the worker.
A broker that drops out mid-task is not the job's failure: the message goes back to its queue.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject

from fleet import telemetry
from fleet.app import (
    ARGS_REPR,
    BATCH_TASK,
    CALLBACK_TASK,
    EXECUTE_TASK,
    LEGACY_NOTIFY_TASK,
    NOTIFY_TASK,
    RESULT_REPR_MAX,
    ROUTE_TASK,
    app,
)
from fleet.batch.config import batch_link
from fleet.batch.lane import pool_job
from fleet.boundary import BROKER_ERRORS
from fleet.budgets import team_of
from fleet.callbacks import deliver
from fleet.errors import InvalidRequest, Reason
from fleet.escalations import NewEscalation
from fleet.middleware.base import Requeue, Skip
from fleet.models import JobEnvelope, TaskRequest, TaskResult
from fleet.notify import notify_people
from fleet.router import decide
from fleet.runtime import Runtime, get_runtime

__all__ = ["FleetTask", "batch", "callback", "execute", "notify", "route"]

log = logging.getLogger(__name__)


class FleetTask(Task[Any, Any]):
    """A broker that drops out mid-task is not the task's failure: Celery would store FAILURE and ack
    it (a job lost). Reject with requeue instead; if the broker is still down the message stays
    unacked and comes back after the visibility timeout."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except BROKER_ERRORS as exc:
            log.warning("task %s: the broker is unavailable (%s): requeued", self.request.id, exc)
            raise Reject(f"broker unavailable: {exc}", requeue=True) from exc


@app.task(name=ROUTE_TASK, bind=True, ignore_result=True, base=FleetTask)
def route(self: Task[Any, Any], request: Any = None, job: Any = None) -> None:
    """Classify a job and enqueue it on its tier's queue, keeping its id."""
    runtime = get_runtime()
    checked = _checked(runtime, self, request, job)
    if checked is None:
        return
    req, envelope = checked
    if req.pipeline is not None:
        _start_pipeline(runtime, req, envelope, request)
        return
    settings = runtime.settings
    ask = runtime.ask_mini if settings.router.classifier == "llm" else None
    envelope.routing = decide(req, settings.router, ask=ask, feedback=runtime.feedback())
    span = telemetry.task_span("route", {"fleet.task_id": envelope.id, "fleet.kind": req.kind})
    telemetry.set_routing(span, envelope.routing)
    link = batch_link(settings, req, envelope.routing)
    if link is not None:  # it can wait: a provider batch, at batch prices
        envelope.routing.reasons.append(
            f"hints.deadline_s {req.hints.deadline_s}: the batch lane ({link[0]}:{link[1]})"
        )
        app.send_task(
            BATCH_TASK, args=[request, envelope.model_dump(mode="json")], task_id=f"batch-{envelope.id}",
            queue="batch", argsrepr=ARGS_REPR, kwargsrepr="{}",
        )  # fmt: skip
        return
    team = team_of(settings.budgets, req.metadata)
    runtime.send_on(request, envelope, team=team, priority=req.priority, task=self)


@app.task(name=BATCH_TASK, bind=True, ignore_result=True, base=FleetTask)
def batch(self: Task[Any, Any], request: Any = None, job: Any = None) -> None:
    """Pool a job that can wait for its provider's next batch (:mod:`fleet.batch`); its message is
    acked once the job is in Redis."""
    runtime = get_runtime()
    checked = _checked(runtime, self, request, job)
    if checked is None:
        return
    req, envelope = checked
    routing = envelope.routing
    link = batch_link(runtime.settings, req, routing) if routing is not None else None
    if link is None or req.hints.deadline_s is None:  # the lane is off on this worker: a live job
        runtime.send_on(request, envelope, task=self)
        return
    pool_job(runtime.client, request, envelope, link, req.hints.deadline_s)


def _checked(
    runtime: Runtime, task: Task[Any, Any], request: Any, job: Any
) -> tuple[TaskRequest, JobEnvelope] | None:
    """A routing task's message validated, or None once an invalid one went to people. These tasks
    store no results: the escalation's result goes under the job's id."""
    checked = runtime.validate(task, request, job)
    if isinstance(checked, TaskResult):
        app.backend.store_result(checked.task_id, checked.model_dump(mode="json"), "SUCCESS")
        return None
    return checked


def _start_pipeline(runtime: Runtime, req: TaskRequest, envelope: JobEnvelope, request: Any) -> None:
    """A pipeline's request: record it and send its first step (a pipeline this fleet does not know,
    a producer with another config, goes to people as an invalid message)."""
    telemetry.task_span("route", {"fleet.task_id": envelope.id, "fleet.pipeline": req.pipeline})
    try:
        runtime.pipelines.start(req, envelope)
    except InvalidRequest as exc:
        escalated = runtime.handoff.escalate(
            NewEscalation(
                task_id=envelope.id, reason=Reason.INVALID_MESSAGE,
                detail=f"{ROUTE_TASK}: {'; '.join(exc.errors)}",
                request=request if isinstance(request, dict | str) else repr(request)[:2000], queue="router",
                submitted_at=envelope.submitted_at,
            )
        )  # fmt: skip
        app.backend.store_result(escalated.task_id, escalated.model_dump(mode="json"), "SUCCESS")


# Requeues are bounded by fleet.runner.MAX_REQUEUES. A short repr of the result: Celery builds it for
# every task (events, the "succeeded" log line), and an answer can be long (a job whose result Celery
# stores returns the whole of it; one the worker stored returns a line, Ran.summary).
@app.task(name=EXECUTE_TASK, bind=True, max_retries=None, resultrepr_maxsize=RESULT_REPR_MAX, base=FleetTask)
def execute(self: Task[Any, Any], request: Any = None, job: Any = None) -> dict[str, Any] | str:
    """Run one tier job through the worker's middlewares and its tier's chain."""
    runtime = get_runtime()
    accepted = runtime.accept(self, request, job)
    if isinstance(accepted, TaskResult):
        return accepted.model_dump(mode="json")
    try:
        ran = runtime.runner.run(accepted)
    except Skip:
        raise Ignore() from None
    except Requeue as again:
        # Sent on, then ignored, not raised as Celery's Retry: Celery would store a RETRY state under
        # the job's result key after the message is out, and the run it starts (a quality upgrade goes
        # at once, on another worker) may have written the job's final result there by then; Celery's
        # read-then-write guard leaves a window where RETRY lands on top of it, and the job shows no
        # result ever again.
        args = (accepted.payload, accepted.envelope.model_dump(mode="json"))
        self.retry(
            args=args, kwargs={}, countdown=round(again.countdown_s, 3), max_retries=None, throw=False,
            **runtime.queue_options(again.queue),
        )  # fmt: skip
        log.info("task %s %s", self.request.id, again)  # "requeued for 0.500 s [on standard]: why"
        raise Ignore() from None
    if ran.flushed == "failed":
        return ran.stored  # the broker stayed away: Celery stores it, with its own retries
    self.request.ignore_result = True  # stored with the job's last round trip; Celery gets a summary
    return ran.summary()


def _notify(self: Task[Any, Any], escalation_id: Any = None) -> None:
    """Tell people about a new escalation (its record is already stored): the webhook, retried with
    capped backoff, and the record marked ``notified_at`` (see :func:`fleet.notify.notify_people`)."""
    telemetry.task_span("notify", {"fleet.escalation.id": str(escalation_id)})
    runtime = get_runtime()
    retries = int(self.request.retries or 0)
    delay = notify_people(runtime.store, runtime.settings.escalation, str(escalation_id), retries=retries)
    if delay is not None:
        raise self.retry(countdown=delay, max_retries=runtime.settings.escalation.webhook_max_retries)


notify = app.task(name=NOTIFY_TASK, bind=True, ignore_result=True)(_notify)


@app.task(name=CALLBACK_TASK, bind=True, ignore_result=True)
def callback(self: Task[Any, Any], task_id: Any = None, url: Any = None) -> None:
    """POST a job's final result to its ``callback_url`` (see :mod:`fleet.callbacks`), retried with
    capped, jittered backoff; on the escalations queue, so an endpoint never holds a model slot."""
    telemetry.task_span("callback", {"fleet.task_id": str(task_id)})
    runtime = get_runtime()
    settings = runtime.settings.callbacks
    delay = deliver(runtime.client, settings, str(task_id), str(url), retries=int(self.request.retries or 0))
    if delay is not None:
        raise self.retry(countdown=delay, max_retries=settings.max_retries)


# Messages queued before the rename (the task was "fleet.escalate") still find it.
app.task(name=LEGACY_NOTIFY_TASK, bind=True, ignore_result=True)(_notify)
