"""Tracing and metrics: one OpenTelemetry trace per job, GenAI conventions, SDK metrics.

See ``docs/telemetry.md``. :func:`setup` installs what the ``OTEL_*`` variables and
``[telemetry]`` ask for; everything else here is cheap when nothing was installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fleet.models import Attempt, TaskResult
from fleet.settings import Settings
from fleet.telemetry.runtime import (
    instruments,
    is_configured,
    register_queue_gauges,
    setup,
    shutdown,
)
from fleet.telemetry.spans import (
    chat_span,
    continued,
    current_traceparent,
    end_attempt,
    inject_context,
    instrument_celery,
    link_back,
    link_to,
    record_response,
    set_routing,
    span,
    task_span,
    tracer,
)

__all__ = [
    "chat_span",
    "continued",
    "current_traceparent",
    "end_attempt",
    "inject_context",
    "instrument_celery",
    "instruments",
    "is_configured",
    "link_back",
    "link_to",
    "on_worker_init",
    "on_worker_process_init",
    "record_escalation",
    "record_job",
    "record_requeue",
    "record_response",
    "register_queue_gauges",
    "set_routing",
    "setup",
    "shutdown",
    "span",
    "task_span",
    "tracer",
]


def record_job(result: TaskResult, attempts: Sequence[Attempt]) -> None:
    """Metrics of a job's final state (no-op when metrics are off)."""
    found = instruments()
    if found is not None:
        found.record_job(result, attempts)


def record_escalation(reason: str, tier: str | None) -> None:
    found = instruments()
    if found is not None:
        found.escalations.add(1, {"fleet.reason": reason, "fleet.tier": tier or "none"})


def record_requeue(queue: str | None, why: str) -> None:
    found = instruments()
    if found is not None:
        found.requeues.add(1, {"fleet.queue": queue or "none", "fleet.reason": why})


def _is_prefork(pool_cls: Any) -> bool:
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool as Prefork

    try:
        cls = get_implementation(pool_cls) if isinstance(pool_cls, str) else pool_cls
    except (ImportError, KeyError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, Prefork)


def on_worker_init(worker: Any, settings: Settings, role: str) -> bool:
    """``worker_init`` (the worker's main process): set up for threads and solo pools, where the
    tasks run in this process; a prefork pool's children set up in :func:`on_worker_process_init`."""
    if _is_prefork(getattr(worker, "pool_cls", None)):
        return False
    return on_worker_process_init(settings, role)


def on_worker_process_init(settings: Settings, role: str) -> bool:
    """``worker_process_init`` (a prefork child, after the fork): set up, then instrument Celery."""
    if setup(settings, role=role):
        instrument_celery()
        return True
    return False
