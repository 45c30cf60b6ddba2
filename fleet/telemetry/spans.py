"""The spans of a job's trace, with the OpenTelemetry GenAI semantic conventions.

One trace per job::

    submit (producer)
    └── route (router)
        └── execute (tier)
            ├── chat {model}      one per model call, the fallback chain's attempts
            ├── chat {model}
            └── escalate (escalations pool, when no link answered)

The ``route``, ``execute`` and ``escalate`` spans are the consumer spans of
:mod:`fleet.telemetry.consumer` (``run/<task>``), renamed by the task body: one span per task run,
its parent extracted from the message headers. :func:`inject_context`, connected to
``before_task_publish``, writes the current context into the headers (no publish span: for a task
sent by name, ``send_task``, opentelemetry-instrumentation-celery's were never ended and their context
stayed attached to the thread, opentelemetry-python-contrib#609).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from celery import signals
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from fleet.models import Attempt, RoutingDecision
from fleet.telemetry import runtime

__all__ = [
    "chat_span",
    "continued",
    "current_traceparent",
    "end_attempt",
    "inject_context",
    "instrument_celery",
    "link_back",
    "link_to",
    "record_response",
    "set_routing",
    "span",
    "task_span",
    "tracer",
]

_TRACECONTEXT = TraceContextTextMapPropagator()
_global_tracer: trace.Tracer | None = None


def tracer() -> trace.Tracer | None:
    """The fleet's tracer, the global one when a service installed its own SDK, else None (off)."""
    global _global_tracer
    state = runtime.state()
    if state.tracer is not None and state.pid == os.getpid():
        return state.tracer
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None
    if _global_tracer is None:
        _global_tracer = trace.get_tracer(runtime.TRACER_NAME)
    return _global_tracer


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    links: Sequence[Link] | None = None,
) -> Iterator[Span]:
    """A current span named ``name``; a no-op span (nothing attached) when tracing is off."""
    found = tracer()
    if found is None:
        yield INVALID_SPAN
        return
    with found.start_as_current_span(name, kind=kind, attributes=_clean(attributes), links=links) as current:
        yield current


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (attributes or {}).items() if v is not None}


def task_span(name: str, attributes: Mapping[str, Any] | None = None) -> Span:
    """The running task's consumer span, renamed ``name`` (no-op span when tracing is off)."""
    current = trace.get_current_span()
    if not current.is_recording():
        return INVALID_SPAN
    current_name = getattr(current, "name", "")
    if current_name.startswith("run/"):
        current.update_name(name)
    elif current_name != name:
        return INVALID_SPAN  # not a task's span: leave whatever it is alone
    if attributes:
        current.set_attributes(_clean(attributes))
    return current


def set_routing(target: Span, decision: RoutingDecision) -> None:
    """A routing decision as ``fleet.tier``, ``fleet.routing.score``, ``fleet.routing.reasons``."""
    if not target.is_recording():
        return
    target.set_attribute("fleet.tier", str(decision.tier))
    target.set_attribute("fleet.routing.classifier", decision.classifier)
    target.set_attribute("fleet.routing.reasons", list(decision.reasons))
    if decision.score is not None:
        target.set_attribute("fleet.routing.score", decision.score)


def _messages(role: str, text: str, finish_reason: str | None = None) -> str:
    message: dict[str, Any] = {"role": role, "parts": [{"type": "text", "content": text}]}
    if finish_reason is not None:
        message["finish_reason"] = finish_reason
    return json.dumps([message], ensure_ascii=False)


@contextmanager
def chat_span(
    provider: str,
    model: str,
    index: int,
    *,
    prompt: str,
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> Iterator[Span]:
    """One model call of the chain: ``chat {model}``, a CLIENT span with the GenAI attributes.

    Prompt text is recorded only with ``telemetry.capture_content`` (``gen_ai.input.messages``);
    credentials never are: nothing here sees a header.
    """
    found = tracer()
    if found is None:
        yield INVALID_SPAN
        return
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "fleet.fallback.index": index,
        "gen_ai.request.max_tokens": max_tokens,
        "gen_ai.request.temperature": temperature,
    }
    if runtime.state().capture_content:
        attributes["gen_ai.input.messages"] = _messages("user", prompt)
        if system:
            attributes["gen_ai.system_instructions"] = json.dumps(
                [{"type": "text", "content": system}], ensure_ascii=False
            )
    with found.start_as_current_span(
        f"chat {model}", kind=SpanKind.CLIENT, attributes=_clean(attributes), record_exception=False
    ) as current:
        yield current


def record_response(text: str, finish_reason: str, response_model: str, model: str) -> None:
    """What the provider answered, on the current ``chat`` span (before the quality checks)."""
    current = trace.get_current_span()
    if not current.is_recording():
        return
    current.set_attribute("gen_ai.response.model", response_model or model)
    current.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
    if runtime.state().capture_content:
        current.set_attribute("gen_ai.output.messages", _messages("assistant", text, finish_reason))


def end_attempt(target: Span, attempt: Attempt, error_code: str | None) -> None:
    """An attempt's usage, cost and outcome; ``error.type`` and an error status on failure."""
    if not target.is_recording():
        return
    target.set_attribute("gen_ai.usage.input_tokens", attempt.input_tokens)
    target.set_attribute("gen_ai.usage.output_tokens", attempt.output_tokens)
    if runtime.state().genai_latest:  # the latest conventions' cache and reasoning tokens
        for name, count in (
            ("gen_ai.usage.cache_read.input_tokens", attempt.cached_input_tokens),
            ("gen_ai.usage.cache_creation.input_tokens", attempt.cache_write_tokens),
            ("gen_ai.usage.reasoning.output_tokens", attempt.reasoning_tokens),
        ):
            if count:
                target.set_attribute(name, count)
    target.set_attribute("fleet.cost_usd", attempt.cost_usd)
    target.set_attribute("fleet.attempt.outcome", attempt.outcome)
    if attempt.tokens_estimated:
        target.set_attribute("fleet.usage.estimated", True)
    if attempt.http_status is not None:
        target.set_attribute("http.response.status_code", attempt.http_status)
    if error_code is not None:
        # The code only: a provider's error text can quote what was sent.
        target.set_attribute("error.type", error_code)
        target.set_status(Status(StatusCode.ERROR, error_code))


def current_traceparent() -> str | None:
    """The current span as a W3C ``traceparent`` value (kept on an escalation record), or None."""
    carrier: dict[str, str] = {}
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    _TRACECONTEXT.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def continued(traceparent: str | None) -> Iterator[None]:
    """Within this block, what is sent continues the trace ``traceparent`` names, when no span is
    current (a pipeline a person resumed from the inbox goes on in the pipeline's trace)."""
    if not traceparent or trace.get_current_span().get_span_context().is_valid:
        yield
        return
    token = otel_context.attach(_TRACECONTEXT.extract({"traceparent": traceparent}))
    try:
        yield
    finally:
        otel_context.detach(token)


def link_to(traceparent: str | None) -> list[Link]:
    """A Link to the span a ``traceparent`` value names (none for a missing or bad value)."""
    if not traceparent:
        return []
    ctx = trace.get_current_span(_TRACECONTEXT.extract({"traceparent": traceparent}, Context()))
    span_context = ctx.get_span_context()
    return [Link(span_context)] if span_context.is_valid else []


def link_back(target: Span, traceparent: str | None) -> None:
    """Link ``target`` to the span a ``traceparent`` names (a person's action to the job's trace)."""
    if not target.is_recording():
        return
    for link in link_to(traceparent):
        target.add_link(link.context, {"fleet.link": "escalated_job"})
        target.set_attribute("fleet.job.trace_id", format(link.context.trace_id, "032x"))


def inject_context(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish``: the current trace context into the message headers.

    The worker's consumer span (fleet.telemetry.consumer) extracts it, so the next hop continues the
    same trace, also for a task sent by name (send_task). Without a current span it costs one lookup.
    """
    if headers is None or not trace.get_current_span().get_span_context().is_valid:
        return
    propagate.inject(headers)


signals.before_task_publish.connect(inject_context, weak=False, dispatch_uid="fleet.telemetry.inject")


def instrument_celery() -> None:
    """A consumer span around each task run of this process, on the fleet's tracer
    (:mod:`fleet.telemetry.consumer`); again after a new setup, on its tracer."""
    state = runtime.state()
    if state.tracer is None:
        return
    from fleet.telemetry import consumer

    consumer.connect(state.tracer)
    state.celery_instrumented = True
