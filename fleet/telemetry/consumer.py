"""One consumer span per task run, its parent the trace context in the message's headers.

This is what opentelemetry-instrumentation-celery's prerun and postrun handlers did for the fleet,
and only that. The instrumentation also swept the request context into span attributes twice per
task, kept a dict of start times and recorded a task-runtime histogram: about 13% of a tier worker's
CPU at load (py-spy, docs/performance.md), for data the fleet's own spans and metrics already carry.

The span is named ``run/<task name>`` and the task body renames it (``route``, ``execute``, ...: see
:func:`fleet.telemetry.spans.task_span`). The context travels as the ``traceparent`` header that
:func:`fleet.telemetry.spans.inject_context` writes at publish; Celery makes each header an attribute
of the task's request, where this module reads it.
"""

from __future__ import annotations

from typing import Any

from celery import signals
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

__all__ = ["connect", "disconnect"]

#: Where a running task keeps its span and context tokens: an attribute of its own request.
_HELD = "_fleet_consumer_span"


class _RequestGetter(Getter[Any]):
    """Reads a propagation header from a task's request (Celery copies headers onto it)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return []


_GETTER = _RequestGetter()
_tracer: trace.Tracer | None = None


def _prerun(task_id: Any = None, task: Any = None, **_: Any) -> None:
    tracer = _tracer
    if tracer is None or task is None:
        return
    request = task.request
    parent = propagate.extract(request, getter=_GETTER) if getattr(request, "traceparent", None) else None
    span = tracer.start_span(
        f"run/{task.name}", context=parent, kind=SpanKind.CONSUMER,
        attributes={"celery.task_name": task.name, "messaging.system": "celery",
                    "messaging.message.id": str(task_id)},
    )  # fmt: skip
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    setattr(request, _HELD, (span, token))


def _postrun(task: Any = None, state: Any = None, **_: Any) -> None:
    request = getattr(task, "request", None)
    held = getattr(request, _HELD, None)
    if held is None:
        return
    span, token = held
    setattr(request, _HELD, None)
    if state is not None:
        span.set_attribute("celery.state", str(state))
    otel_context.detach(token)
    span.end()


def _failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    held = getattr(getattr(sender, "request", None), _HELD, None)
    if held is None or exception is None:
        return
    span = held[0]
    span.record_exception(exception)
    span.set_status(Status(StatusCode.ERROR, str(exception)))


def _retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
    held = getattr(getattr(sender, "request", None), _HELD, None)
    if held is not None and reason is not None:
        held[0].set_attribute("celery.retry.reason", str(reason))


def connect(tracer: trace.Tracer) -> None:
    """Open a consumer span around each task run of this process, on ``tracer``."""
    global _tracer
    _tracer = tracer
    signals.task_prerun.connect(_prerun, weak=False, dispatch_uid="fleet.telemetry.prerun")
    signals.task_postrun.connect(_postrun, weak=False, dispatch_uid="fleet.telemetry.postrun")
    signals.task_failure.connect(_failure, weak=False, dispatch_uid="fleet.telemetry.failure")
    signals.task_retry.connect(_retry, weak=False, dispatch_uid="fleet.telemetry.retry")


def disconnect() -> None:
    global _tracer
    _tracer = None
    signals.task_prerun.disconnect(_prerun, dispatch_uid="fleet.telemetry.prerun")
    signals.task_postrun.disconnect(_postrun, dispatch_uid="fleet.telemetry.postrun")
    signals.task_failure.disconnect(_failure, dispatch_uid="fleet.telemetry.failure")
    signals.task_retry.disconnect(_retry, dispatch_uid="fleet.telemetry.retry")
